"""peewee_suite: peewee's own test suite run against plain SqliteDatabase or S3SqliteDatabase.

Nothing is downloaded here: give it a checkout (or `git archive`) of coleifer/peewee that holds
its `tests/` package, e.g. made with

    git --git-dir=<mirror of coleifer/peewee> archive 4.3.0 tests | tar -x -C /tmp/peewee-suite

Running it (one process, the whole suite, no fail-fast; each run takes about a minute):

    python bench/peewee_suite.py run /tmp/peewee-suite --mode plain --json /tmp/plain.json
    python bench/peewee_suite.py run /tmp/peewee-suite --mode s3    --json /tmp/s3.json
    python bench/peewee_suite.py compare /tmp/plain.json /tmp/s3.json

`run` loads the suite the way peewee's runtests.py does (unittest, every test of the `tests`
package, PEEWEE_TEST_BACKEND=sqlite) in a fresh work directory (the current directory of the
run: where `peewee_test.db` lands). With `--mode s3` every SqliteDatabase that the helpers of
`tests/base.py` build — `db_loader`, and through it `get_in_memory_db`, `get_sqlite_db` and
`new_connection` — is built as an S3SqliteDatabase instead, on `file://<workdir>/storage`, with
one database_name per local file (its name plus a hash of its absolute path). Nothing in the
suite's files is changed: an import hook executes `tests/base.py` statement by statement and
wraps `db_loader` right after its definition, before the module builds its shared `db`.

* In-memory databases (`:memory:`) cannot be replicated: they are built plain, and counted.
* A helper asked for a subclass of SqliteDatabase (`db_class=PooledSqliteDatabase`,
  `SqliteQueueDatabase`) gets, with `--subclasses compose` (the default), a class deriving from
  both S3SqliteDatabase and that subclass; with `--subclasses plain` the subclass itself.
* Databases the tests construct themselves (`SqliteDatabase(':memory:')` in a test body, ...)
  are not the helpers' and stay as they are.

Every test is put in one category by the database objects it used (whose cursor() or
connection() it called): `replicated` (a helper's file database, replicated in s3 mode),
`memory` (only a helper's in-memory database), `other` (only databases the test built itself),
`none` (no database: SQL generation and the like). The same bookkeeping runs in plain mode.

After the suite, `run` shuts down every S3SqliteDatabase it built (the last object out ships
and takes the final snapshot), restores each replicated database with
`peewee_s3.restore(storage=..., database_name=..., target=...)` into `<workdir>/restored/`, and
compares it with its local file, where one is left: the tables, their row counts, and a digest
of each table's rows.

What `run` prints: unittest's own output (stderr), then a summary: the counts (collected,
passed, failures, errors, skipped, expected failures, unexpected successes), the categories,
the helper-built databases (file and in-memory), peewee_s3's log records of WARNING and above
(per level), the shutdown errors, the restore comparison, and every test that did not pass
with its exception type, first message line and the innermost peewee_s3 frame of its
traceback. `--json` writes all of it per test.

What `compare` prints: the tests that pass on the first run and not on the second, grouped by
cause (exception type and message, paths and numbers normalised), with the peewee_s3 frame each
group's tracebacks end in; then the reverse direction, and the tests whose outcome is the same.

To measure a given commit of peewee_s3 rather than the installed one, export it and put it
first on the path: `git archive <commit> peewee_s3 | tar -x -C /tmp/ps3 && echo <commit> >
/tmp/ps3/COMMIT`, then `PYTHONPATH=/tmp/ps3 python bench/peewee_suite.py run ...` (the summary
prints which peewee_s3 was measured). `--recover` (s3 mode): after each test, the sessions of
files that a test deleted or replaced are shut down, as LocalStateError's message asks, so that
one deleted file fails the tests that meet it instead of every later one (a diagnostic run:
it shows what the cascade hides). Its failures vary a little from run to run: a test whose
setUp deleted the file after a recovery gets it restored with whatever had been shipped (the
replicator ships in the background), and may see tables of earlier tests.

`run` exits 0 when every test passed, 1 otherwise; `compare` exits 0.

Options of `run`: `--workdir DIR` (default: a new temporary directory, kept, its path printed),
`--subclasses compose|plain`, `-v` (unittest verbosity 2), and test names after `--only`
(`--only db_tests.TestDatabase models`) as peewee's runner takes them.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.abc
import importlib.machinery
import json
import logging
import os
import re
import sqlite3
import sys
import tempfile
import time
import traceback
import unittest
from collections import Counter, defaultdict

SQLITE_ENGINES = ("sqlite", "sqlite3")


# -- which test is running, and which databases it used -------------------------------------

class Tracker:
    """The current test (set by the result object) and the database objects each test used."""

    def __init__(self) -> None:
        self.current = "<import>"
        self.used: dict = defaultdict(set)          # test id -> kinds of databases used
        self.logs: list = []                         # peewee_s3 records, WARNING and above

    def note_use(self, db) -> None:
        self.used[self.current].add(getattr(db, "_suite_kind", "other"))


TRACKER = Tracker()


def install_use_hooks() -> None:
    """Database.cursor and .connection note which database the running test used (nothing
    else changes: the originals are called as they are)."""
    import peewee

    for name in ("cursor", "connection"):
        original = getattr(peewee.Database, name)

        def hook(self, *args, __original=original, **kwargs):
            TRACKER.note_use(self)
            return __original(self, *args, **kwargs)

        hook.__name__ = name
        hook.__wrapped__ = original
        setattr(peewee.Database, name, hook)


class _LogToTracker(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        TRACKER.logs.append({"test": TRACKER.current, "level": record.levelname,
                             "thread": record.threadName, "message": record.getMessage()})


# -- building the databases ---------------------------------------------------------------

class Factory:
    """Builds what tests.base.db_loader is asked for (see the module docstring)."""

    def __init__(self, mode: str, storage_dir: str, subclasses: str) -> None:
        self.mode, self.subclasses = mode, subclasses
        self.storage_dir = storage_dir
        self.storage_url = "file://" + os.path.abspath(storage_dir)
        self.built: list = []          # every database object the helpers built, kept alive
        self.files: dict = {}          # abs path -> {"database_name", "objects", "classes"}
        self.memory = 0                # in-memory helper databases built plain
        self.replicator = "thread"     # S3SqliteDatabase's option (--replicator)
        self._composed: dict = {}

    def name_for(self, path: str) -> str:
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", os.path.basename(path)) or "db"
        return f"{stem}-{hashlib.sha256(path.encode()).hexdigest()[:10]}"

    def s3_class(self, db_class):
        from peewee import SqliteDatabase
        from peewee_s3 import S3SqliteDatabase

        if db_class is None or db_class is SqliteDatabase:
            return S3SqliteDatabase
        if self.subclasses == "plain":
            return None
        if db_class not in self._composed:
            self._composed[db_class] = type(f"S3{db_class.__name__}",
                                            (S3SqliteDatabase, db_class), {})
        return self._composed[db_class]

    def build(self, original, engine, name, db_class, params):
        from peewee import SqliteDatabase

        sqlite = (db_class is None and engine.lower() in SQLITE_ENGINES) or (
            db_class is not None and issubclass(db_class, SqliteDatabase))
        if not sqlite:
            return original(engine, name, db_class=db_class, **params)
        if name == ":memory:" or name.startswith("file::memory"):
            db = original(engine, name, db_class=db_class, **params)
            db._suite_kind = "memory"
            self.memory += 1
            self.built.append(db)
            return db
        filename = name if name.endswith(".db") else f"{name}.db"
        path = os.path.abspath(filename)
        entry = self.files.setdefault(path, {"database_name": self.name_for(path),
                                             "objects": 0, "classes": []})
        cls = self.s3_class(db_class) if self.mode == "s3" else None
        if cls is None:
            db = original(engine, name, db_class=db_class, **params)
            db._suite_kind = "file" if self.mode == "plain" else "subclass-plain"
        else:
            db = original(engine, name, db_class=cls,
                          **dict(params, storage=self.storage_url,
                                 database_name=entry["database_name"],
                                 replicator=self.replicator))
            db._suite_kind = "file"
        entry["objects"] += 1
        entry["classes"].append(type(db).__name__)
        self.built.append(db)
        return db


class _BaseLoader(importlib.abc.Loader):
    """Executes tests/base.py statement by statement; right after `def db_loader` it wraps
    db_loader in the factory (the helpers and the module's own `db = new_connection()` look it
    up as a global, and the other test modules import it later)."""

    def __init__(self, path: str, factory: Factory) -> None:
        self.path, self.factory = path, factory

    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        with open(self.path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), self.path)
        wrapped = False
        for node in tree.body:
            code = compile(ast.Module(body=[node], type_ignores=[]), self.path, "exec")
            exec(code, module.__dict__)
            if isinstance(node, ast.FunctionDef) and node.name == "db_loader":
                self._wrap(module)
                wrapped = True
        if not wrapped:
            raise RuntimeError(f"{self.path} defines no db_loader: not the suite expected")

    def _wrap(self, module) -> None:
        original, factory = module.db_loader, self.factory

        def db_loader(engine, name="peewee_test", db_class=None, **params):
            return factory.build(original, engine, name, db_class, params)

        db_loader.__wrapped__ = original
        db_loader.__doc__ = "peewee_suite's factory around tests.base.db_loader"
        module.db_loader = db_loader


class _BaseFinder(importlib.abc.MetaPathFinder):
    def __init__(self, factory: Factory) -> None:
        self.factory = factory

    def find_spec(self, fullname, path, target=None):
        if fullname != "tests.base":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None:
            spec.loader = _BaseLoader(spec.origin, self.factory)
        return spec


# -- recording each test --------------------------------------------------------------------

def _s3_frame(tb) -> str | None:
    """The innermost frame of peewee_s3 in a traceback, as path:line (function)."""
    found = None
    for frame in traceback.extract_tb(tb):
        if f"{os.sep}peewee_s3{os.sep}" in frame.filename:
            found = f"{frame.filename.split(os.sep + 'peewee_s3' + os.sep, 1)[1]}:" \
                    f"{frame.lineno} ({frame.name})"
            found = "peewee_s3/" + found
    return found


def _chain(exc) -> list:
    """The exception and its causes/contexts, outermost first, as 'Type: first line'."""
    out, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        out.append(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        exc = exc.__cause__ or exc.__context__
    return out


class RecordingResult(unittest.TextTestResult):
    records: dict = {}
    after_test = None   # called with the test id after each test (--recover)

    def startTest(self, test) -> None:
        TRACKER.current = test.id()
        self._started = time.monotonic()
        super().startTest(test)

    def stopTest(self, test) -> None:
        super().stopTest(test)
        rec = self.records.setdefault(test.id(), {"outcome": "passed"})
        rec["seconds"] = round(time.monotonic() - self._started, 3)
        TRACKER.current = "<between tests>"
        if RecordingResult.after_test is not None:
            RecordingResult.after_test(test.id())

    def _record(self, test, outcome, err=None, reason=None) -> None:
        rec = {"outcome": outcome}
        if err is not None:
            exc_type, exc, tb = err
            message = str(exc)
            rec.update(exc_type=exc_type.__name__,
                       message=message.splitlines()[0] if message else "",
                       chain=_chain(exc), peewee_s3_frame=_s3_frame(tb),
                       peewee_s3_frames=[f"{f.filename}:{f.lineno} ({f.name})"
                                         for f in traceback.extract_tb(tb)
                                         if f"{os.sep}peewee_s3{os.sep}" in f.filename],
                       traceback="".join(traceback.format_exception(exc_type, exc, tb))[-6000:])
        if reason is not None:
            rec["reason"] = str(reason)
        previous = self.records.get(test.id())
        if previous and previous["outcome"] in ("failure", "error") and outcome == "passed":
            return
        self.records[test.id()] = rec

    def addSuccess(self, test) -> None:
        super().addSuccess(test)
        self._record(test, "passed")

    def addFailure(self, test, err) -> None:
        super().addFailure(test, err)
        self._record(test, "failure", err)

    def addError(self, test, err) -> None:
        super().addError(test, err)
        self._record(test, "error", err)

    def addSkip(self, test, reason) -> None:
        super().addSkip(test, reason)
        self._record(test, "skipped", reason=reason)

    def addExpectedFailure(self, test, err) -> None:
        super().addExpectedFailure(test, err)
        self._record(test, "expected_failure")

    def addUnexpectedSuccess(self, test) -> None:
        super().addUnexpectedSuccess(test)
        self._record(test, "unexpected_success")

    def addSubTest(self, test, subtest, err) -> None:
        super().addSubTest(test, subtest, err)
        if err is not None:
            kind = "failure" if issubclass(err[0], test.failureException) else "error"
            self._record(test, kind, err)


# -- after the run: shutdown, restore, compare ------------------------------------------------

def _table_summary(path: str) -> dict:
    """{table: {"rows": n, "digest": sha256 of its rows in order}} of a database file, opened
    read-only (a -wal beside it is read too)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        out = {}
        for table in tables:
            quoted = '"' + table.replace('"', '""') + '"'
            try:
                rows = conn.execute(f"SELECT * FROM {quoted} ORDER BY 1").fetchall()
                digest = hashlib.sha256(repr(rows).encode()).hexdigest()[:16]
                out[table] = {"rows": len(rows), "digest": digest}
            except sqlite3.Error as exc:   # a virtual table whose module is missing, ...
                out[table] = {"rows": None, "error": f"{type(exc).__name__}: {exc}"}
        return out
    finally:
        conn.close()


def shutdown_all(factory: Factory) -> list:
    from peewee_s3 import S3SqliteDatabase

    errors = []
    for db in factory.built:
        if not isinstance(db, S3SqliteDatabase):
            continue
        try:
            db.shutdown()
        except Exception as exc:  # noqa: BLE001 - reported, the others still shut down
            errors.append({"database": repr(db), "class": type(db).__name__,
                           "error": f"{type(exc).__name__}: {exc}",
                           "peewee_s3_frame": _s3_frame(exc.__traceback__)})
    return errors


def recover_deleted_files(factory: Factory, test_id: str, log: list) -> None:
    """--recover: after a test, every file whose replica session finds it deleted or replaced
    gets what LocalStateError's message asks for: shutdown() of every object on it, so that
    the next connect() opens a new session (restoring the file if it is missing)."""
    from peewee_s3 import LocalStateError, S3SqliteDatabase

    stale = {}
    for db in factory.built:
        session = getattr(db, "_session", None) if isinstance(db, S3SqliteDatabase) else None
        if session is None or session.closed or db._path in stale:
            continue
        try:
            session.check_file()
        except LocalStateError:
            stale[db._path] = []
    for db in factory.built:
        if isinstance(db, S3SqliteDatabase) and db._path in stale and db._session is not None:
            try:
                db.shutdown()
            except Exception as exc:  # noqa: BLE001 - LocalStateError is the documented one
                stale[db._path].append(f"{type(exc).__name__}: {str(exc)[:160]}")
    for path, errors in stale.items():
        log.append({"after": test_id, "path": path, "shutdown_errors": errors})


def restore_and_compare(factory: Factory, workdir: str) -> list:
    import peewee_s3

    results = []
    target_dir = os.path.join(workdir, "restored")
    os.makedirs(target_dir, exist_ok=True)
    for path, entry in sorted(factory.files.items()):
        name = entry["database_name"]
        item = {"path": path, "database_name": name, "objects": entry["objects"],
                "classes": sorted(set(entry["classes"]))}
        target = os.path.join(target_dir, f"{name}.db")
        try:
            state = peewee_s3.restore(storage=factory.storage_url, database_name=name,
                                      target=target)
            item["restored"] = {"generation": getattr(state, "generation", None),
                                "seq": getattr(state, "seq", None)}
        except Exception as exc:  # noqa: BLE001 - reported
            item["restore_error"] = f"{type(exc).__name__}: {exc}"
            results.append(item)
            continue
        restored = _table_summary(target)
        item["restored_tables"] = restored
        if not os.path.exists(path) or os.path.getsize(path) == 0:
            item["local"] = "none left by the suite"
            results.append(item)
            continue
        local = _table_summary(path)
        item["local_tables"] = local
        mismatches = []
        for table in sorted(set(local) | set(restored)):
            a, b = local.get(table), restored.get(table)
            if a is None or b is None:
                mismatches.append(f"{table}: only in {'restored' if a is None else 'local'}")
            elif (a["rows"], a.get("digest")) != (b["rows"], b.get("digest")):
                mismatches.append(f"{table}: local {a['rows']} rows ({a.get('digest')}), "
                                  f"restored {b['rows']} rows ({b.get('digest')})")
        item["mismatches"] = mismatches
        results.append(item)
    return results


# -- the run ------------------------------------------------------------------------------

def _peewee_s3_origin() -> str:
    """Where the peewee_s3 measured was imported from, with its commit when that is known
    (a git checkout: `git describe --always --dirty`; an export: a COMMIT file beside it)."""
    import subprocess

    import peewee_s3

    package = os.path.dirname(os.path.abspath(peewee_s3.__file__))
    root = os.path.dirname(package)
    commit = None
    try:
        commit = subprocess.run(["git", "-C", root, "describe", "--always", "--dirty"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    if not commit and os.path.isfile(os.path.join(root, "COMMIT")):
        with open(os.path.join(root, "COMMIT")) as f:
            commit = f.read().strip()
    return f"{package} ({commit or 'commit unknown'})"


def _category(kinds: set) -> str:
    if "file" in kinds:
        return "replicated"
    if "memory" in kinds:
        return "memory"
    if kinds:
        return "other"
    return "none"


def run(args) -> int:
    suite_dir = os.path.abspath(args.suite)
    if not os.path.isfile(os.path.join(suite_dir, "tests", "base.py")):
        sys.exit(f"{suite_dir} has no tests/base.py: give the directory that holds peewee's "
                 "tests/ package")
    workdir = os.path.abspath(args.workdir
                              or tempfile.mkdtemp(prefix=f"peewee-suite-{args.mode}-"))
    os.makedirs(workdir, exist_ok=True)
    if os.path.exists(os.path.join(workdir, "peewee_test.db")):
        sys.exit(f"{workdir} already holds a peewee_test.db: use a fresh --workdir")
    os.chdir(workdir)
    os.environ["PEEWEE_TEST_BACKEND"] = "sqlite"
    os.environ.setdefault("PEEWEE_TEST_VERBOSITY", "1")
    for module in [m for m in sys.modules if m == "tests" or m.startswith("tests.")]:
        del sys.modules[module]
    sys.path.insert(0, suite_dir)

    logging.getLogger("peewee_s3").addHandler(_LogToTracker(level=logging.WARNING))
    factory = Factory(args.mode, os.path.join(workdir, "storage"), args.subclasses)
    factory.replicator = args.replicator
    sys.meta_path.insert(0, _BaseFinder(factory))
    install_use_hooks()
    recoveries: list = []
    if args.recover and args.mode == "s3":
        RecordingResult.after_test = lambda test_id: recover_deleted_files(
            factory, test_id, recoveries)

    started = time.monotonic()
    import tests  # noqa: F401  (the suite; its modules build their databases on import)
    if not os.path.abspath(tests.__file__).startswith(suite_dir + os.sep):
        sys.exit(f"imported {tests.__file__}, not the suite's tests package")
    loader = unittest.TestLoader()
    if args.only:
        names = [n if n.startswith("tests.") else f"tests.{n}" for n in args.only]
        suite = loader.loadTestsFromNames(names)
    else:
        suite = loader.loadTestsFromModule(tests)
    collected = suite.countTestCases()
    RecordingResult.records = {}
    runner = unittest.TextTestRunner(verbosity=2 if args.verbose else 1, failfast=False,
                                     resultclass=RecordingResult)
    result = runner.run(suite)
    suite_seconds = time.monotonic() - started
    TRACKER.current = "<after the suite>"
    RecordingResult.after_test = None

    shutdown_errors = shutdown_all(factory) if args.mode == "s3" else []
    restores = restore_and_compare(factory, workdir) if args.mode == "s3" else []
    local_left = {path: (_table_summary(path) if os.path.exists(path) else None)
                  for path in factory.files}

    records = RecordingResult.records
    measured = _peewee_s3_origin() if args.mode == "s3" else None
    for test_id, rec in records.items():
        rec["category"] = _category(TRACKER.used.get(test_id, set()))
        rec["kinds_used"] = sorted(TRACKER.used.get(test_id, set()))
    outcomes = Counter(rec["outcome"] for rec in records.values())
    counts = {"collected": collected, "ran": result.testsRun, "recorded": len(records),
              "passed": outcomes["passed"], "failures": outcomes["failure"],
              "errors": outcomes["error"], "skipped": outcomes["skipped"],
              "expected_failures": outcomes["expected_failure"],
              "unexpected_successes": outcomes["unexpected_success"],
              "failed_total": outcomes["failure"] + outcomes["error"]}
    categories = Counter(rec["category"] for rec in records.values()
                         if rec["outcome"] != "skipped")
    report = {
        "mode": args.mode, "suite": suite_dir, "workdir": workdir,
        "subclasses": args.subclasses, "recover": bool(args.recover),
        "seconds": round(suite_seconds, 1),
        "python": sys.version.split()[0], "sqlite": sqlite3.sqlite_version,
        "peewee": __import__("peewee").__version__, "peewee_s3": measured,
        "counts": counts, "categories_of_tests_run": dict(categories),
        "helper_databases": {"files": factory.files, "in_memory_built_plain": factory.memory},
        "peewee_s3_log": TRACKER.logs, "recoveries": recoveries,
        "shutdown_errors": shutdown_errors,
        "restore": restores, "local_files_left": local_left, "tests": records,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=str)
    print_summary(report)
    return 0 if counts["failed_total"] == 0 else 1


def print_summary(report: dict) -> None:
    out = sys.stdout
    c = report["counts"]
    print(f"\n== peewee's suite, mode {report['mode']} (peewee {report['peewee']}, SQLite "
          f"{report['sqlite']}, Python {report['python']}), {report['seconds']} s", file=out)
    print(f"workdir: {report['workdir']}", file=out)
    if report.get("peewee_s3"):
        print(f"peewee_s3 measured: {report['peewee_s3']}", file=out)
    print("counts: " + ", ".join(f"{k} {v}" for k, v in c.items()), file=out)
    print("tests run (not skipped) by the databases they used: " + ", ".join(
        f"{k} {v}" for k, v in sorted(report["categories_of_tests_run"].items())), file=out)
    h = report["helper_databases"]
    print(f"helper databases: {h['in_memory_built_plain']} in memory (plain); files:", file=out)
    for path, entry in h["files"].items():
        print(f"  {path}: {entry['objects']} objects {dict(Counter(entry['classes']))}, "
              f"database_name {entry['database_name']}", file=out)
    levels = Counter(r["level"] for r in report["peewee_s3_log"])
    print(f"peewee_s3 log records (WARNING+): {dict(levels) or 'none'}", file=out)
    for msg, n in Counter(re.sub(r"\d+", "N", r["message"])[:160]
                          for r in report["peewee_s3_log"]).most_common(10):
        print(f"  {n:4d} x {msg}", file=out)
    if report.get("recover"):
        print(f"--recover: sessions shut down after a deleted/replaced file: "
              f"{len(report['recoveries'])}", file=out)
        for r in report["recoveries"]:
            print(f"  after {r['after']}: {r['path']} {r['shutdown_errors']}", file=out)
    if report["mode"] == "s3":
        print(f"shutdown errors: {len(report['shutdown_errors'])}", file=out)
        for e in report["shutdown_errors"]:
            print(f"  {e['class']}: {e['error'][:200]} [{e['peewee_s3_frame']}]", file=out)
        print("restore comparison:", file=out)
        for r in report["restore"]:
            if "restore_error" in r:
                print(f"  {r['database_name']}: restore failed: {r['restore_error'][:300]}",
                      file=out)
            elif "mismatches" not in r:
                print(f"  {r['database_name']}: restored "
                      f"{len(r['restored_tables'])} tables; {r['local']}", file=out)
            else:
                tables = r["local_tables"]
                print(f"  {r['database_name']}: local {len(tables)} tables, "
                      f"{sum(t['rows'] or 0 for t in tables.values())} rows; restored "
                      f"{len(r['restored_tables'])} tables, "
                      f"{sum(t['rows'] or 0 for t in r['restored_tables'].values())} rows; "
                      f"mismatches: {r['mismatches'] or 'none'}", file=out)
    bad = {t: r for t, r in report["tests"].items() if r["outcome"] in ("failure", "error")}
    print(f"tests that did not pass: {len(bad)}"
          + (" (the first 60 listed; all are in --json)" if len(bad) > 60 else ""), file=out)
    for test_id, r in sorted(bad.items())[:60]:
        print(f"  {r['outcome']:7s} {test_id} [{r['category']}]: {r.get('exc_type')}: "
              f"{(r.get('message') or '')[:150]}"
              + (f" [{r['peewee_s3_frame']}]" if r.get("peewee_s3_frame") else ""), file=out)


# -- comparing two runs -------------------------------------------------------------------

def _cause(rec: dict, workdirs: list) -> str:
    message = rec.get("message") or ""
    for w in workdirs:
        message = message.replace(w, "<workdir>")
    message = re.sub(r"0x[0-9a-f]+", "0x…", message)
    message = re.sub(r"\b[0-9a-f]{8,}\b", "<hex>", message)
    message = re.sub(r"\b\d+(\.\d+)?\b", "N", message)
    return f"{rec.get('exc_type')}: {message[:240]}"


def compare(args) -> int:
    with open(args.first) as f:
        a = json.load(f)
    with open(args.second) as f:
        b = json.load(f)
    workdirs = [a["workdir"], b["workdir"]]
    passing = ("passed", "skipped", "expected_failure")
    ids = sorted(set(a["tests"]) | set(b["tests"]))
    broke, fixed, same_bad, missing = [], [], [], []
    for test_id in ids:
        ra, rb = a["tests"].get(test_id), b["tests"].get(test_id)
        if ra is None or rb is None:
            missing.append((test_id, "first" if ra is None else "second"))
        elif ra["outcome"] in passing and rb["outcome"] not in passing:
            broke.append((test_id, rb))
        elif ra["outcome"] not in passing and rb["outcome"] in passing:
            fixed.append((test_id, ra))
        elif ra["outcome"] not in passing:
            same_bad.append((test_id, ra, rb))
    print(f"{args.first} ({a['mode']}): " + ", ".join(f"{k} {v}" for k, v in a["counts"].items()))
    print(f"{args.second} ({b['mode']}): " + ", ".join(f"{k} {v}" for k, v in b["counts"].items()))
    print(f"\n== {len(broke)} tests pass on {a['mode']} and fail on {b['mode']}, by cause:")
    groups = defaultdict(list)
    for test_id, rec in broke:
        groups[_cause(rec, workdirs)].append((test_id, rec))
    for cause, members in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        frames = Counter(rec.get("peewee_s3_frame") for _, rec in members)
        print(f"\n[{len(members)}] {cause}")
        print("     peewee_s3 frame: " + ", ".join(f"{fr or '(none)'} x{n}"
                                                   for fr, n in frames.most_common()))
        cats = Counter(a["tests"][test_id].get("category") for test_id, _ in members)
        print(f"     categories (in {a['mode']}): "
              + ", ".join(f"{k} {v}" for k, v in cats.items()))
        shown = members if args.full else members[:25]
        for test_id, rec in shown:
            print(f"     - {test_id} ({rec['outcome']})")
        if len(shown) < len(members):
            print(f"     … and {len(members) - len(shown)} more (--full lists them)")
    lease = [t for t, rec in broke if "LeaseHeld" in (rec.get("exc_type") or "")
             or "one database object per file" in (rec.get("message") or "")
             or any("LeaseHeld" in c for c in rec.get("chain", []))]
    print(f"\nLeaseHeldError / 'one database object per file' among them: {len(lease)}")
    print(f"\n== {len(fixed)} tests fail on {a['mode']} and pass on {b['mode']}:")
    for test_id, rec in fixed:
        print(f"     - {test_id}: {rec.get('exc_type')}: {(rec.get('message') or '')[:120]}")
    print(f"\n== {len(same_bad)} tests fail on both:")
    for test_id, ra, rb in same_bad:
        print(f"     - {test_id}: {ra.get('exc_type')} / {rb.get('exc_type')}: "
              f"{(rb.get('message') or '')[:120]}")
    if missing:
        print(f"\n== {len(missing)} tests recorded in one run only:")
        for test_id, where in missing:
            print(f"     - {test_id} (only in the {'second' if where == 'first' else 'first'})")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run the suite once")
    p.add_argument("suite", help="directory holding peewee's tests/ package")
    p.add_argument("--mode", choices=("plain", "s3"), default="s3")
    p.add_argument("--workdir", help="work directory (default: a new temporary one)")
    p.add_argument("--subclasses", choices=("compose", "plain"), default="compose")
    p.add_argument("--replicator", choices=("thread", "process"), default="thread",
                   help="S3SqliteDatabase's replicator option (s3 mode)")
    p.add_argument("--json", help="write the per-test results here")
    p.add_argument("--recover", action="store_true",
                   help="s3 mode: after a test, shut down the sessions of files deleted or "
                        "replaced under them (what LocalStateError asks), see the docstring")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--only", nargs="+", help="test names, as peewee's runtests.py takes them")
    c = sub.add_parser("compare", help="compare two --json results")
    c.add_argument("first")
    c.add_argument("second")
    c.add_argument("--full", action="store_true", help="list every test of every group")
    args = parser.parse_args(argv)
    return run(args) if args.command == "run" else compare(args)


if __name__ == "__main__":
    sys.exit(main())
