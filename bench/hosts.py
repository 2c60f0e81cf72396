"""hosts: many processes on one file (issue 11) — 1 and 4 writer processes on plain SQLite and
on peewee-s3 (async on file:// and on SeaweedFS, sync on SeaweedFS), side by side in one run.

    python -m bench.hosts [--quick] [--rounds N] [--seconds S] [--plot FILE]

Each writer is a process of its own (`python -m bench.hosts writer SPEC`), as a web server's
workers are; the first to open a peewee-s3 file replicates it, the others write as members
(docs/HOSTS.md). Requests are counted at the counting proxy, never by the systems themselves;
this module only drives and times. See bench/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

from bench.processes import python_module, stop_process
from bench.proxy import CountingProxy
from bench.rows import Item, insert_one
from bench.run import library_version
from bench.servers import _cpu_seconds as cpu_seconds_of
from bench.servers import start_server
from bench.systems import PRAGMAS, PeeweeS3, Plain, System, Target
from bench.workloads import Bench, Settings, percentile

PROCESSES = (1, 4)
START_DELAY = 0.3  # seconds between "go" and the first measured commit of every writer
STEP_TIMEOUT = 120.0  # seconds a writer may take to get ready, to measure, or to stop
SLOW_MS = 5.0  # a commit this slow waited for something (a lock, the GIL, a core)


@dataclass(frozen=True)
class Setup:
    """One system under test: peewee-s3's mode and storage, or plain SQLite."""

    key: str
    label: str
    system: str  # "plain", "s3-async" or "s3-sync"
    storage: Optional[str] = None  # "file" or "seaweedfs"
    replicator: str = "thread"  # peewee-s3's option: replication in the first writer, or a helper


SETUPS = (
    Setup("plain", "plain SQLite (WAL)", "plain"),
    Setup("async-file", "peewee-s3 async, file://", "s3-async", "file"),
    Setup("async-s3", "peewee-s3 async, SeaweedFS", "s3-async", "seaweedfs"),
    Setup("sync-s3", "peewee-s3 sync, SeaweedFS", "s3-sync", "seaweedfs"),
    Setup("async-file-proc", "... async, file://, helper", "s3-async", "file", "process"),
    Setup("async-s3-proc", "... async, SeaweedFS, helper", "s3-async", "seaweedfs", "process"),
    Setup("sync-s3-proc", "... sync, SeaweedFS, helper", "s3-sync", "seaweedfs", "process"),
)


@dataclass(frozen=True)
class HostSettings:
    rounds: int = 3  # every (setup, processes) cell once a round, in a rotating order
    seconds: float = 3.5  # the measured window of a cell
    warm_up: int = 300  # commits each writer makes before the window (sync: a tenth)
    only: tuple = ()  # the setups to run (their keys; plain SQLite always): () for all

    @classmethod
    def quick(cls) -> "HostSettings":
        return cls(rounds=1, seconds=2.0, warm_up=200)


# -- the writer (runs in each child process) ------------------------------------------------

class PeeweeS3File(System):
    """peewee-s3 with file:// storage (a folder beside the database): PeeweeS3's options, no
    server."""

    settle = PeeweeS3.settle

    def __init__(self, path: str, store: str, *, sync_mode: str, replicator: str = "thread",
                 **kwargs) -> None:
        from peewee_s3 import S3SqliteDatabase

        super().__init__(path, None, **kwargs)
        self.name, self.label = f"s3-{sync_mode}-file", f"peewee-s3 {sync_mode}, file://"
        self.db = S3SqliteDatabase(path, storage=f"file://{store}", database_name="db",
                                   sync_mode=sync_mode, sync_interval=self.interval,
                                   replicator=replicator, pragmas=PRAGMAS,
                                   check_same_thread=False)

    def stop(self) -> None:
        super().stop()
        self.db.shutdown()


def _writer_system(spec: dict) -> System:
    if spec["system"] == "plain":
        return Plain(spec["path"])
    mode = spec["system"].removeprefix("s3-")
    if spec["storage"] == "file":
        return PeeweeS3File(spec["path"], spec["store"], sync_mode=mode,
                            replicator=spec["replicator"])
    # PeeweeS3 reads only the bucket and the endpoint (the proxy's) of its target.
    return PeeweeS3(spec["path"], Target(None, spec["endpoint"], spec["bucket"]),
                    sync_mode=mode, replicator=spec["replicator"])


def _say(**fields) -> None:
    print(json.dumps(fields), flush=True)


def writer(spec: dict) -> None:
    """Open the file, warm up, say `ready`; on `go` make back-to-back single-row commits for
    the window and report each one's latency; on `stop` close (and shut down)."""
    system = _writer_system(spec)
    system.start()
    with system.db.bind_ctx([Item]):
        for _ in range(spec["warm_up"]):
            insert_one()
        system.settle()
        role = "plain" if spec["system"] == "plain" else system.db.status()["role"]
        _say(step="ready", role=role, pid=os.getpid())
        go = json.loads(sys.stdin.readline())
        time.sleep(max(0.0, go["start_at"] - time.time()))
        until = go["start_at"] + go["seconds"]
        latencies = []
        cpu, app_cpu, began = time.process_time(), time.thread_time(), time.time()
        while True:
            started = time.perf_counter()
            insert_one()
            latencies.append(time.perf_counter() - started)
            if time.time() >= until:
                break
        ended, cpu, app_cpu = (time.time(), time.process_time() - cpu,
                               time.thread_time() - app_cpu)
        _say(step="measured", role=role, pid=os.getpid(), began=began, ended=ended, cpu=cpu,
             app_cpu=app_cpu, latencies_us=[round(s * 1e6, 1) for s in latencies])
        sys.stdin.readline()
    system.stop()
    _say(step="done")


# -- the bench (parent) ----------------------------------------------------------------------

class Writer:
    """A writer process and the lines it says, read by a thread so that waits can time out."""

    def __init__(self, spec: dict) -> None:
        self.process = python_module("hosts", "writer", json.dumps(spec), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self._lines.put(json.loads(line))
        self._lines.put(None)

    def expect(self, step: str) -> dict:
        try:
            said = self._lines.get(timeout=STEP_TIMEOUT)
        except queue.Empty:
            said = None
        if said is None or said.get("step") != step:
            raise RuntimeError(f"writer {self.process.pid} did not say {step!r} (it said "
                               f"{said!r}, exit code {self.process.poll()}); see its stderr")
        return said

    def tell(self, message: dict) -> None:
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()

    def stop(self) -> None:
        stop_process(self.process, timeout=30)


@dataclass
class Cell:
    """One measured window: `processes` writers of one setup."""

    setup: str
    processes: int
    commits: int
    rate: float  # commits per second, all writers together
    p50_ms: float
    p99_ms: float
    max_ms: float
    slow_share: float  # share of the writers' time spent in commits of SLOW_MS or more
    app_cpu_us: float  # CPU of the writers' committing threads, per commit
    other_cpu_us: float  # CPU of their other threads (peewee-s3's), per commit
    requests: Optional[float] = None  # per commit, at the proxy (SeaweedFS only)
    puts: Optional[float] = None
    methods: dict = field(default_factory=dict)  # requests by method, in the window
    server_cpu_us: Optional[float] = None  # SeaweedFS's CPU per commit
    machine_busy: float = 0.0  # share of all cores busy during the window (anyone's work)
    others: float = 0.0  # cores busy with neither the writers nor SeaweedFS (other users, the
                         # proxy, this bench) during the window
    by_role: dict = field(default_factory=dict)  # role -> [inserts/s of each writer]


def machine_cpu() -> tuple:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        ticks = [int(t) for t in f.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK"), sum(ticks) / os.sysconf("SC_CLK_TCK")


def run_cell(bench: Bench, setup: Setup, processes: int, settings: HostSettings) -> Cell:
    path = bench.fresh_path(f"{setup.key}-{processes}")
    created = Plain(path)  # the table exists before any writer opens the file
    created.start()
    with created.db.bind_ctx([Item]):
        created.db.create_tables([Item])
    created.stop()
    spec = {"system": setup.system, "storage": setup.storage, "path": path,
            "replicator": setup.replicator,
            "warm_up": settings.warm_up // (10 if setup.system == "s3-sync" else 1)}
    target = None
    if setup.storage == "file":
        spec["store"] = os.path.join(os.path.dirname(path), "store")
    elif setup.storage == "seaweedfs":
        target = bench.target(setup.key)
        spec.update(bucket=target.bucket, endpoint=target.endpoint)
    writers = []
    try:
        writers = [Writer(spec) for _ in range(processes)]
        for w in writers:
            w.expect("ready")
        if target is not None:
            bench.wait_quiet(quiet=0.5)
        bench.proxy.reset()
        server_cpu, machine = cpu_seconds_of(bench.server.pid), machine_cpu()
        go = {"start_at": time.time() + START_DELAY, "seconds": settings.seconds}
        for w in writers:
            w.tell(go)
        measured = [w.expect("measured") for w in writers]
        traffic = bench.proxy.reset()
        server_cpu = cpu_seconds_of(bench.server.pid) - server_cpu
        busy, total = (after - before for after, before in zip(machine_cpu(), machine))
        for w in writers:
            w.tell({"step": "stop"})
        for w in writers:
            w.expect("done")
            w.process.wait(timeout=STEP_TIMEOUT)
    finally:
        for w in writers:
            w.stop()
        if target is not None:
            bench.server.empty_bucket(target.bucket)
    latencies = [s for m in measured for s in m["latencies_us"]]
    commits = len(latencies)
    window = max(m["ended"] for m in measured) - min(m["began"] for m in measured)
    by_role: dict = {}
    for m in measured:
        by_role.setdefault(m["role"], []).append(
            round(len(m["latencies_us"]) / (m["ended"] - m["began"])))
    cell = Cell(setup.key, processes, commits, commits / window,
                percentile(latencies, 50) / 1000, percentile(latencies, 99) / 1000,
                max(latencies) / 1000,
                sum(s for s in latencies if s >= SLOW_MS * 1000) / sum(latencies),
                sum(m["app_cpu"] for m in measured) / commits * 1e6,
                sum(m["cpu"] - m["app_cpu"] for m in measured) / commits * 1e6,
                machine_busy=busy / total, by_role=by_role,
                others=(busy - server_cpu - sum(m["cpu"] for m in measured))
                / (total / os.cpu_count()))
    if target is not None:
        cell.requests, cell.puts = traffic.total / commits, traffic.puts / commits
        cell.methods = traffic.requests
        cell.server_cpu_us = server_cpu / commits * 1e6
    return cell


def run_round(bench: Bench, settings: HostSettings, round_: int) -> list:
    """Every cell once; the setups start at another one each round, so that none is always
    measured first (the machine is shared and its load drifts)."""
    setups = [s for s in SETUPS if s.key == "plain" or not settings.only or s.key in settings.only]
    order = setups[round_ % len(setups):] + setups[:round_ % len(setups)]
    cells = []
    for processes in PROCESSES:
        for setup in order:
            cell = run_cell(bench, setup, processes, settings)
            roles = ", ".join(f"{role} {' '.join(f'{r:,}' for r in rates)}/s"
                              for role, rates in cell.by_role.items())
            extra = (f", {cell.requests:.2f} req/commit {cell.methods}, SeaweedFS "
                     f"{cell.server_cpu_us:.0f} µs CPU/commit" if cell.requests is not None
                     else "")
            bench.log(f"round {round_ + 1}: {processes} x {setup.label}: {cell.rate:,.0f} "
                      f"inserts/s ({roles}), {cell.commits:,} commits, p50 {cell.p50_ms:.3f} "
                      f"ms, p99 {cell.p99_ms:.3f} ms, max {cell.max_ms:.1f} ms "
                      f"({cell.slow_share:.1%} of the time in commits >= {SLOW_MS:g} ms), "
                      f"CPU/commit {cell.app_cpu_us:.0f} µs app + {cell.other_cpu_us:.0f} µs "
                      f"peewee-s3 threads{extra}; machine {cell.machine_busy:.0%} busy, "
                      f"{cell.others:.2f} cores by others; load {_load()}")
            cells.append(cell)
    return cells


# -- the table -------------------------------------------------------------------------------

FIGURES = ("rate", "p50_ms", "p99_ms", "max_ms", "slow_share", "requests", "puts",
           "app_cpu_us", "other_cpu_us", "server_cpu_us")


def summarise(cells: list) -> dict:
    """(processes, setup) -> figure -> (median, min, max) over the rounds."""
    out: dict = {}
    for processes in PROCESSES:
        for setup in SETUPS:
            mine = [c for c in cells if c.processes == processes and c.setup == setup.key]
            if not mine:
                continue
            values = {f: [getattr(c, f) for c in mine if getattr(c, f) is not None]
                      for f in FIGURES}
            out[(processes, setup.key)] = {f: (statistics.median(v), min(v), max(v))
                                           for f, v in values.items() if v}
    return out


def _median(summary: dict, processes: int, setup: str, figure: str) -> Optional[float]:
    found = summary.get((processes, setup), {}).get(figure)
    return found[0] if found else None


def _ratio(summary: dict, processes: int, setup: str, figure: str) -> Optional[float]:
    mine, plain = (_median(summary, processes, s, figure) for s in (setup, "plain"))
    return mine / plain if mine is not None and plain else None


THREAD_GOALS = (
    # (text, (processes, setup, figure), compared against plain?, test)
    ("async inserts/s, 1 process, file://", (1, "async-file", "rate"), True, ">= 0.95 x plain",
     lambda v: v >= 0.95),
    ("async inserts/s, 1 process, SeaweedFS", (1, "async-s3", "rate"), True, ">= 0.95 x plain",
     lambda v: v >= 0.95),
    ("async commit p99, 1 process, file://", (1, "async-file", "p99_ms"), True, "<= 2 x plain",
     lambda v: v <= 2),
    ("async commit p99, 1 process, SeaweedFS", (1, "async-s3", "p99_ms"), True, "<= 2 x plain",
     lambda v: v <= 2),
    ("async inserts/s, 4 processes, file://", (4, "async-file", "rate"), True, ">= 0.9 x plain",
     lambda v: v >= 0.9),
    ("async inserts/s, 4 processes, SeaweedFS", (4, "async-s3", "rate"), True, ">= 0.9 x plain",
     lambda v: v >= 0.9),
    ("sync requests per commit, 4 processes", (4, "sync-s3", "requests"), False,
     "well under 1 (<= 0.5)", lambda v: v <= 0.5),
)
# The same goals with replication in a helper process (replicator="process").
GOALS = THREAD_GOALS + tuple((f"{text}, helper", (processes, f"{setup}-proc", figure), *rest)
                             for text, (processes, setup, figure), *rest in THREAD_GOALS)


def _spread(found: Optional[tuple], fmt: str) -> str:
    return "" if found is None else f"{fmt.format(found[1])} - {fmt.format(found[2])}"


# (heading, width, cell text from (summary, processes, setup, that row's figures))
COLUMNS = (
    ("inserts/s", 9, lambda s, p, k, f: f"{f['rate'][0]:,.0f}"),
    ("min - max", 15, lambda s, p, k, f: _spread(f["rate"], "{:,.0f}")),
    ("ratio", 5, lambda s, p, k, f: f"{_ratio(s, p, k, 'rate'):.2f}"),
    ("p50 ms", 7, lambda s, p, k, f: f"{f['p50_ms'][0]:.3f}"),
    ("p99 ms", 7, lambda s, p, k, f: f"{f['p99_ms'][0]:.3f}"),
    ("min - max", 15, lambda s, p, k, f: _spread(f["p99_ms"], "{:.3f}")),
    ("ratio", 6, lambda s, p, k, f: f"{_ratio(s, p, k, 'p99_ms'):.2f}"),
    ("max ms", 6, lambda s, p, k, f: f"{f['max_ms'][0]:.1f}"),
    (f"in >={SLOW_MS:g}ms", 8, lambda s, p, k, f: f"{f['slow_share'][0]:.1%}"),
    ("req/commit", 10, lambda s, p, k, f: f"{f['requests'][0]:.3f}" if "requests" in f else ""),
    ("PUT/commit", 10, lambda s, p, k, f: f"{f['puts'][0]:.3f}" if "puts" in f else ""),
    ("CPU µs/commit: app", 18, lambda s, p, k, f: f"{f['app_cpu_us'][0]:,.0f}"),
    ("peewee-s3", 9, lambda s, p, k, f: f"{f['other_cpu_us'][0]:,.0f}"),
    ("SeaweedFS", 9,
     lambda s, p, k, f: f"{f['server_cpu_us'][0]:,.0f}" if "server_cpu_us" in f else ""),
)


def table(summary: dict) -> str:
    labels = {s.key: s.label for s in SETUPS}
    head = f"{'procs':>5}  {'system':<27}" + "".join(
        f"  {name:>{width}}" for name, width, _ in COLUMNS)
    lines = [head]
    for (processes, setup), figures in summary.items():
        if setup == "plain" and len(lines) > 1:
            lines.append("")
        lines.append((f"{processes:>5}  {labels[setup]:<27}" + "".join(
            f"  {text(summary, processes, setup, figures):>{width}}"
            for _, width, text in COLUMNS)).rstrip())
    lines += ["", f"{'goal':<48} {'target':<22} {'measured':>9}  verdict"]
    for text, (processes, setup, figure), relative, target, test in GOALS:
        value = (_ratio if relative else _median)(summary, processes, setup, figure)
        verdict = "n/a" if value is None else ("met" if test(value) else "MISSED")
        shown = "" if value is None else f"{value:.2f}" + (" x" if relative else "")
        lines.append(f"{text:<48} {target:<22} {shown:>9}  {verdict}")
    return "\n".join(lines)


def plot(summary: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {s.key: s.label for s in SETUPS}
    panels = (("rate", "inserts per second (all writers)"), ("p99_ms", "commit latency p99, ms"),
              ("requests", "requests per commit (SeaweedFS)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4))
    for ax, (figure, title) in zip(axes, panels):
        rows = [(f"{p} x {labels[s]}", f[figure], s) for (p, s), f in summary.items()
                if figure in f]
        ax.barh([r[0] for r in rows], [r[1][0] for r in rows],
                xerr=[[r[1][0] - r[1][1] for r in rows], [r[1][2] - r[1][0] for r in rows]],
                color=["tab:gray" if r[2] == "plain" else "tab:blue" for r in rows], capsize=3)
        values = [r[1][0] for r in rows if r[1][0] > 0]
        if values and max(values) / min(values) > 50:
            ax.set_xscale("log")
        ax.invert_yaxis()
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def arguments(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.hosts",
        description="1 and 4 writer processes on one file: plain SQLite against peewee-s3 "
                    "(async on file:// and SeaweedFS, sync on SeaweedFS). See bench/README.md.")
    p.add_argument("--quick", action="store_true", help="one round of 2 s cells (under a minute)")
    p.add_argument("--rounds", type=int, help="rounds of every cell (default 3; --quick: 1)")
    p.add_argument("--seconds", type=float,
                   help="the measured window of a cell (default 3.5; --quick: 2)")
    p.add_argument("--plot", metavar="PNG", help="draw inserts/s, p99 and requests per commit")
    p.add_argument("--workdir", help="where to make the (removed) work directory")
    p.add_argument("--only", metavar="KEYS", help="comma-separated setups to run besides plain "
                   f"SQLite ({', '.join(s.key for s in SETUPS if s.key != 'plain')})")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = arguments(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    settings = HostSettings.quick() if args.quick else HostSettings()
    settings = HostSettings(rounds=args.rounds or settings.rounds,
                            seconds=args.seconds or settings.seconds, warm_up=settings.warm_up,
                            only=tuple(args.only.split(",")) if args.only else ())
    version, began, load_before = library_version(), time.monotonic(), _load()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - began:6.1f} s] {message}", file=sys.stderr, flush=True)

    cells = []
    with tempfile.TemporaryDirectory(prefix="peewee-s3-hosts-", dir=args.workdir) as workdir:
        with start_server("seaweedfs", workdir) as server:
            proxy = CountingProxy(server.endpoint)
            try:
                server.warm_up()
                bench = Bench(server, proxy, None, workdir, Settings(), log)
                log(f"seaweedfs at {server.endpoint}, warmed up and idle; load {_load()}")
                for n in range(settings.rounds):
                    cells += run_round(bench, settings, n)
            finally:
                proxy.stop()
    summary = summarise(cells)
    busy = statistics.median(c.machine_busy for c in cells)
    others = statistics.median(c.others for c in cells)
    print(f"\nmany processes on one file: peewee-s3 at {version}, SeaweedFS behind the counting "
          f"proxy, {settings.rounds} round(s) of {settings.seconds:g} s a cell, medians "
          f"[min - max]; {time.monotonic() - began:.0f} s")
    print(f"{os.cpu_count()} cores; load average (1, 5, 15 min) {load_before} before, "
          f"{_load()} after; during the windows the cores were {busy:.0%} busy (median), "
          f"{others:.2f} cores of it neither the writers' nor SeaweedFS's (other users, the "
          f"proxy)\n")
    print(table(summary))
    if args.plot:
        plot(summary, args.plot)
        print(f"\nplot: {args.plot}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["writer"]:
        writer(json.loads(sys.argv[2]))
    else:
        raise SystemExit(main())
