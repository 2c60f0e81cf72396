"""report: what each figure means, its goal, and the table and bar charts of a run.

Repeated runs are summarised as the median with min–max; a ratio is taken against the
figure's reference row (plain SQLite, its WAL bytes, or a plain download); each goal of
issue 5 is judged on the peewee-s3 rows.
"""
from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Optional

MB_IN_MiB = 1e6 / 2**20

LABELS = {
    "plain": "plain SQLite (WAL)",
    "s3-async": "peewee-s3 async",
    "s3-sync": "peewee-s3 sync",
    "s3": "peewee-s3",
    "s3-ranged": "peewee-s3, 4 ranged GETs",
    "s3-cli": "peewee-s3 command",  # `peewee-s3 restore`, process start to exit
    "seed-async": "seed's way async",
    "seed-sync": "seed's way sync",
    "litestream": "Litestream 0.5.17",
    "download": "plain download (1 GET)",
}
ORDER = list(LABELS)

Medians = dict  # system -> median value of one figure
# (medians, medians of every figure, the run's Settings) -> met? (None: a row it needs is missing)
Goal = Callable[[Medians, dict, object], Optional[bool]]


@dataclass(frozen=True)
class Figure:
    id: str
    title: str  # may name settings: {size}, {commits}, {threads}, {rate}, {trickle}
    unit: str
    fmt: str = "{:,.0f}"
    ref: Optional[str] = None  # the row ratios are taken against
    goal_text: str = ""
    goal: Optional[Goal] = None


def _upload_seconds(every: dict) -> float:
    """One upload, for P4's goal: peewee-s3's median sync commit (one segment, round trips
    for the lease included), else 50 ms."""
    latency = every.get("P2.latency", {}).get("s3-sync")
    return latency / 1000 if latency is not None else 0.05


def _lag_goal(interval: float) -> Goal:
    def met(m: Medians, every: dict, *_) -> Optional[bool]:
        if "s3-async" not in m or "litestream" not in m:
            return None
        return m["s3-async"] <= interval + _upload_seconds(every) and m["s3-async"] < m["litestream"]
    return met


def _get(m: Medians, *names: str) -> Optional[tuple]:
    return tuple(m[n] for n in names) if all(n in m for n in names) else None


def _process(m: Medians) -> str:
    """The peewee-s3 row to hold against Litestream's restore, which is a whole process: the
    `peewee-s3 restore` command's (start to exit), or the library call's in older results."""
    return "s3-cli" if "s3-cli" in m else "s3"


FIGURES = {
    "P1": Figure("P1", "single-row inserts per second (commit path)", "/s", ref="plain",
                 goal_text="async >= 0.95 x plain",
                 goal=lambda m, *_: (v := _get(m, "s3-async", "plain")) and v[0] >= 0.95 * v[1]),
    "P2.sync1": Figure("P2", "PUT requests per commit, sync, 1 writer thread", "PUT",
                       fmt="{:.2f}", goal_text="exactly 1 (lease renewals aside)",
                       goal=lambda m, *_: "s3-sync" in m and abs(m["s3-sync"] - 1) <= 0.02),
    "P2.sync8": Figure("P2", "PUT requests per commit, sync, {threads} writer threads", "PUT",
                       fmt="{:.2f}", goal_text="well under 1 (<= 0.5)",
                       goal=lambda m, *_: "s3-sync" in m and m["s3-sync"] <= 0.5),
    "P2.requests1": Figure("P2", "requests per commit, all methods, sync, 1 thread", "req",
                           fmt="{:.2f}"),
    "P2.latency": Figure("P2", "commit latency p50, sync, 1 thread", "ms", fmt="{:.1f}"),
    "P2.async": Figure("P2", "PUT requests per second, async at 1 s, {rate:g} commits/s", "/s",
                       fmt="{:.2f}", goal_text="<= 1 per sync_interval",
                       goal=lambda m, *_: "s3-async" in m and m["s3-async"] <= 1.05),
    "P3.async": Figure("P3", "bytes uploaded per commit, async at 1 s (plain: WAL bytes)", "B",
                       ref="plain", goal_text="<= Litestream's",
                       goal=lambda m, *_: (v := _get(m, "s3-async", "litestream")) and v[0] <= v[1]),
    "P3.sync": Figure("P3", "bytes uploaded per commit, sync (plain: WAL bytes)", "B",
                      ref="plain", goal_text="<= WAL bytes per commit",
                      goal=lambda m, *_: (v := _get(m, "s3-sync", "plain")) and v[0] <= v[1]),
    "P4.p50@1": Figure("P4", "replication lag p50, interval 1 s", "s", fmt="{:.3f}"),
    "P4.p99@1": Figure("P4", "replication lag p99, interval 1 s", "s", fmt="{:.3f}",
                       goal_text="<= 1 s + one upload, < Litestream's", goal=_lag_goal(1.0)),
    "P4.p50@0.1": Figure("P4", "replication lag p50, interval 0.1 s", "s", fmt="{:.3f}"),
    "P4.p99@0.1": Figure("P4", "replication lag p99, interval 0.1 s", "s", fmt="{:.3f}",
                         goal_text="<= 0.1 s + one upload, < Litestream's",
                         goal=_lag_goal(0.1)),
    "P5.restore": Figure("P5", "restore time, {size} + {commits} commits", "s", fmt="{:.2f}",
                         ref="download",
                         goal_text="<= {restore_ratio:g} x download; the command <= 0.5 x "
                         "Litestream's",
                         goal=lambda m, _, settings: (v := _get(m, "s3", "download"))
                         and (c := _get(m, _process(m), "litestream"))
                         and v[0] <= restore_ratio(settings) * v[1] and c[0] <= 0.5 * c[1]),
    "P5.cpu": Figure("P5", "... CPU seconds of the restoring process (start to exit)", "s",
                     fmt="{:.2f}"),
    "P5.snapshot": Figure("P5", "first full upload of the {size} database", "s", fmt="{:.2f}"),
    "P6.snapshot": Figure("P6", "peak RSS of the writer, {size} database (snapshot)", "MiB",
                          goal_text="< 100 MB",
                          goal=lambda m, *_: "s3" in m and m["s3"] < 100 * MB_IN_MiB),
    "P6.restore": Figure("P6", "peak RSS of the restore, {size} database", "MiB",
                         goal_text="< 100 MB; the command <= Litestream's",
                         goal=lambda m, *_: (v := _get(m, _process(m), "litestream"))
                         and v[0] < 100 * MB_IN_MiB and v[0] <= v[1]),
    "P6.idle": Figure("P6", "RSS of the process before the step (imports, no work)", "MiB"),
    "P7.total": Figure("P7", "uploaded per hour, {trickle:g} commits/s into the {size} db",
                       "GiB/h", fmt="{:.3f}"),
    "P7.share": Figure("P7", "... of which periodic full snapshots", "%", fmt="{:.1f}",
                       goal_text="snapshots not dominating (< 50%)",
                       goal=lambda m, *_: "s3-async" in m and m["s3-async"] < 50),
    "P8.shutdown": Figure("P8", "uploaded by a shutdown after {shutdown_commits} commits, {size} db",
                          "B", goal_text="no snapshot (< 1% of the database)",
                          goal=lambda m, _, settings: "s3-async" in m
                          and m["s3-async"] < settings.size / 100),
    "P8.coldstart": Figure("P8", "cold start: connect() to first query, empty disk, {size}", "s",
                           fmt="{:.2f}", ref="download",
                           goal_text="bounded by the download (<= {restore_ratio:g} x)",
                           goal=lambda m, _, settings: (v := _get(m, "s3", "download"))
                           and v[0] <= restore_ratio(settings) * v[1]),
    "P8.coldstart_uploaded": Figure("P8", "... uploaded by that connect()", "B"),
    "P8.coldstart_rss": Figure("P8", "... peak RSS of the cold-starting process", "MiB"),
}


def restore_ratio(settings) -> float:
    """Issue 12's goal for a restore against one plain GET: 1.2 x at 1 GiB, 1.5 x below."""
    return 1.2 if settings.size >= 2**30 else 1.5


@dataclass(frozen=True)
class Row:
    figure: str
    system: str
    median: float
    low: float
    high: float
    runs: int


def summarise(results: list) -> list:
    """Rows of median, min and max over the repeats, in FIGURES and ORDER order."""
    values = defaultdict(list)
    for r in results:
        values[(r.figure, r.system)].append(r.value)
    rows = [Row(f, s, statistics.median(v), min(v), max(v), len(v))
            for (f, s), v in values.items()]
    return sorted(rows, key=lambda r: (list(FIGURES).index(r.figure), ORDER.index(r.system)))


def medians(rows: list) -> dict:
    every: dict = defaultdict(dict)
    for r in rows:
        every[r.figure][r.system] = r.median
    return every


def title(figure: Figure, settings, text: Optional[str] = None) -> str:
    return (figure.title if text is None else text).format(
        size=_size(settings.size), commits=settings.restore_commits, threads=settings.threads,
        rate=settings.stream_rate, trickle=settings.trickle_rate,
        shutdown_commits=settings.shutdown_commits, restore_ratio=restore_ratio(settings))


def verdicts(rows: list, settings) -> dict:
    """figure -> True/False/None (not measured) for every figure that has a goal."""
    every = medians(rows)
    out = {}
    for key, figure in FIGURES.items():
        if figure.goal and key in every:
            verdict = figure.goal(every[key], every, settings)
            out[key] = None if verdict is None else bool(verdict)
    return out


def table(rows: list, settings) -> str:
    every, judged = medians(rows), verdicts(rows, settings)
    lines = [f"{'':4} {'figure':<58} {'system':<25} {'median':>14} {'min - max':>24} "
             f"{'ratio':>7}  goal"]
    last = None
    for r in rows:
        figure = FIGURES[r.figure]
        first = r.figure != last
        if first and last is not None:
            lines.append("")
        last = r.figure
        ref = every[r.figure].get(figure.ref) if figure.ref else None
        ratio = f"{r.median / ref:7.2f}" if ref else ""
        spread = (f"{figure.fmt.format(r.low)} - {figure.fmt.format(r.high)}" if r.runs > 1
                  else "")
        goal = ""
        if first and r.figure in judged:
            verdict = {True: "met", False: "MISSED", None: "n/a"}[judged[r.figure]]
            goal = f"{verdict}: {title(figure, settings, figure.goal_text)}"
        lines.append(f"{figure.id if first else '':4} {title(figure, settings) if first else '':<58} "
                     f"{LABELS[r.system]:<25} {figure.fmt.format(r.median) + ' ' + figure.unit:>14} "
                     f"{spread:>24} {ratio:>7}  {goal}")
    return "\n".join(lines)


def plot(rows: list, settings, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = list(dict.fromkeys(r.figure for r in rows))
    columns = 3
    lines = math.ceil(len(figures) / columns)
    fig, axes = plt.subplots(lines, columns, figsize=(6 * columns, 3.2 * lines), squeeze=False)
    for ax, key in zip(axes.flat, figures):
        mine = [r for r in rows if r.figure == key]
        names = [LABELS[r.system] for r in mine]
        heights = [r.median for r in mine]
        errors = [[r.median - r.low for r in mine], [r.high - r.median for r in mine]]
        colours = ["tab:blue" if r.system.startswith("s3") else "tab:gray" for r in mine]
        ax.barh(names, heights, xerr=errors, color=colours, capsize=3)
        positive = [h for h in heights if h > 0]
        if positive and max(positive) / min(positive) > 50:
            ax.set_xscale("log")
        ax.invert_yaxis()
        ax.set_title(f"{FIGURES[key].id}: {title(FIGURES[key], settings)}", fontsize=9)
        ax.set_xlabel(FIGURES[key].unit, fontsize=8)
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(figures):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _size(size: int) -> str:
    return f"{size / 2**30:g} GiB" if size >= 2**30 else f"{size / 2**20:g} MiB"
