"""run: the command line — start a server, the proxy and the watcher, run the workloads, report.

    python -m bench [--quick] [--repeat N] [--only P1,P3] [--systems plain,s3-async,...]
                    [--server seaweedfs|moto] [--size 256MiB] [--plot out.png] [--json out.json]

Also runs as `python bench/run.py`. See bench/README.md for what each figure means.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

if __package__ in (None, ""):  # `python bench/run.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import report  # noqa: E402
from bench.processes import repo_root  # noqa: E402
from bench.proxy import CountingProxy  # noqa: E402
from bench.servers import start_server  # noqa: E402
from bench.systems import SYSTEMS  # noqa: E402
from bench.watcher import Watcher  # noqa: E402
from bench.workloads import WORKLOADS, Bench, Settings, run_selected  # noqa: E402

_UNITS = {"": 1, "b": 1, "kib": 2**10, "kb": 10**3, "mib": 2**20, "mb": 10**6, "gib": 2**30,
          "gb": 10**9}


def parse_size(text: str) -> int:
    found = re.fullmatch(r"\s*([\d.]+)\s*([a-zA-Z]*)\s*", text)
    if not found or found.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 256MiB or 1GiB")
    return int(float(found.group(1)) * _UNITS[found.group(2).lower()])


def parse_list(allowed) -> callable:
    def parse(text: str) -> list:
        items = [t.strip() for t in text.split(",") if t.strip()]
        unknown = [t for t in items if t not in allowed]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(unknown)}: choose from {', '.join(allowed)}")
        return items
    return parse


def arguments(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description="peewee-s3 measured against plain SQLite, the seed's way and Litestream "
                                "(workloads P1-P7 of issue 5). See bench/README.md.")
    p.add_argument("--quick", action="store_true",
                   help="small counts, 32 MiB database, one repeat (about 3 minutes)")
    p.add_argument("--repeat", type=int, help="runs of each workload (default 3; --quick: 1)")
    p.add_argument("--only", type=parse_list(list(WORKLOADS)), default=list(WORKLOADS),
                   help="workloads, e.g. P1,P3 (default all)")
    p.add_argument("--systems", type=parse_list(SYSTEMS), default=list(SYSTEMS),
                   help=f"systems (default all): {','.join(SYSTEMS)}")
    p.add_argument("--server", choices=("seaweedfs", "moto"), default="seaweedfs")
    p.add_argument("--size", type=parse_size,
                   help="the large database of P5-P7 (default 256MiB; --quick: 32MiB)")
    p.add_argument("--commits", type=int,
                   help="P5: commits (segments) on top of the large database (default 2000)")
    p.add_argument("--plot", metavar="PNG", help="draw the table as bar charts")
    p.add_argument("--json", metavar="FILE", help="write every measurement as JSON")
    p.add_argument("--workdir", help="the folder to make the (removed) work directory in (default: the system's "
                        "temp folder); it needs a few times --size free")
    return p.parse_args(argv)


def library_version() -> str:
    """The commit of the peewee-s3 being measured, `-dirty` if its files differ from it."""
    root = repo_root()
    try:
        return subprocess.run(["git", "-C", root, "describe", "--always", "--dirty"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown version"


def main(argv=None) -> int:
    args = arguments(argv)
    # SIGTERM ends the run like Ctrl-C: the finally blocks stop the server and the helpers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    settings = Settings.quick(args.size) if args.quick else Settings(
        **({"size": args.size} if args.size else {}))
    if args.commits:
        settings = dataclasses.replace(settings, restore_commits=args.commits)
    repeat = args.repeat or (1 if args.quick else 3)
    version = library_version()
    began = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - began:6.1f} s] {message}", file=sys.stderr, flush=True)

    results = []
    with tempfile.TemporaryDirectory(prefix="peewee-s3-bench-", dir=args.workdir) as workdir:
        with start_server(args.server, workdir) as server:
            proxy = CountingProxy(server.endpoint)
            watcher = Watcher(server.endpoint)
            try:
                bench = Bench(server, proxy, watcher, workdir, settings, log)
                bench.warm_up()
                log(f"{args.server} at {server.endpoint}, warmed up and idle")
                for n in range(repeat):
                    log(f"run {n + 1} of {repeat}: {', '.join(args.only)}")
                    results += run_selected(bench, args.only, args.systems, n)
            finally:
                watcher.close()
                proxy.stop()
    rows = report.summarise(results)
    print(f"\npeewee-s3 bench: peewee-s3 at {version}, {args.server}, {repeat} run(s), "
          f"median [min - max]; {time.monotonic() - began:.0f} s\n")
    print(report.table(rows, settings))
    if args.plot:
        report.plot(rows, settings, args.plot)
        print(f"\nplot: {args.plot}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"server": args.server, "repeat": repeat, "library": version,
                       "settings": dataclasses.asdict(settings),
                       "results": [dataclasses.asdict(r) for r in results]}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
