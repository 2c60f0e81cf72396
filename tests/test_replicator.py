"""The replicator ships pages, not databases: bytes uploaded follow the pages changed."""
import os
import time

from .helpers import NAME, Note, make_db, stored_keys


def test_ten_thousand_small_commits_upload_about_the_pages_they_changed(tmp_path, capsys):
    storage_kwargs = {"storage": f"file://{tmp_path}/store"}
    db = make_db(tmp_path / "a.db", storage_kwargs, sync_interval=0.2)
    db.create_tables([Note])
    db.snapshot()
    for i in range(10_000):
        Note.create(body=f"note number {i}")
    db.sync()
    generation = db.status()["generation"]
    database_size = os.path.getsize(tmp_path / "a.db") + os.path.getsize(tmp_path / "a.db-wal")
    segments = {k: v for k, v in stored_keys(storage_kwargs).items()
                if k.startswith(f"{NAME}/generations/{generation}/wal/")}
    uploaded = sum(segments.values())
    with capsys.disabled():
        print(f"\n10,000 commits in async mode: {len(segments)} segments, {uploaded:,} bytes "
              f"uploaded ({uploaded / 10_000:.0f} bytes/commit); database {database_size:,} bytes")
    # Shipping the whole database on every commit would be database_size * 10,000 bytes.
    assert uploaded < database_size * 5
    assert uploaded / 10_000 < 1024
    db.shutdown()


def test_segments_outweighing_the_snapshot_start_a_new_generation(tmp_path):
    storage_kwargs = {"storage": f"file://{tmp_path}/store"}
    db = make_db(tmp_path / "a.db", storage_kwargs, sync_interval=0.05)
    db.create_tables([Note])
    first = db.snapshot()
    for i in range(2500):                # 10 MB of random hex: over 4 MiB even compressed
        Note.create(body=os.urandom(2000).hex())
    db.sync()
    deadline = time.monotonic() + 10
    while db.status()["generation"] == first and time.monotonic() < deadline:
        Note.create(body="tick")
        time.sleep(0.1)
    assert db.status()["generation"] != first
    db.shutdown()


def test_the_replicators_own_checkpoints_keep_one_generation_under_bursts(tmp_path):
    storage_kwargs = {"storage": f"file://{tmp_path}/store"}
    db = make_db(tmp_path / "a.db", storage_kwargs, sync_interval=0.05, checkpoint_frames=50)
    db.create_tables([Note])
    first = db.status()["generation"]
    for i in range(3000):               # many bursts of > checkpoint_frames between shipments
        Note.create(body=str(i))
    db.sync()
    assert db.status()["generation"] == first
    assert db.status()["segments_uploaded"] > 1
    db.shutdown()
