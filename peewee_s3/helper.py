"""helper: replication in a process of its own, beside the app's (`replicator="process"`).

The process that takes a file's host lock (host.py) does not replicate in its own threads: it
starts a helper (`python -c "from peewee_s3.helper import main; main()"`) and hands it the lock. The helper inherits the locked
descriptor — an flock belongs to the open file description, so the lock passes without ever
being free — opens the replica session, and replicates; the opener and every later process
write as members. The helper leaves once no process has the file open (none holds the members
lock), after the last shipment and the lease's release. If it dies, a member takes the host
lock and starts the next one. The options reach it pickled on its stdin, never in its argv
(they may hold credentials); it answers one line of JSON on its stdout: ready, or the error
its opening raised. docs/HOSTS.md says why and what it costs.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import time
from dataclasses import fields

from . import errors
from .config import Options, log_verbosely
from .errors import LocalStateError, PeeweeS3Error

log = logging.getLogger("peewee_s3")

ALONE_EVERY = 0.2  # seconds between the helper's looks at whether any process has the file open
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start(path: str, options: Options, lock_fd: int) -> subprocess.Popen:
    """Start the helper for `path`, handing it the locked `lock_fd`; return once it replicates
    (its session is open, the state file says ready), or raise what its opening raised."""
    # The options are pickled on their own, to be read once the app's sys.path is the
    # helper's too: a storage given as an fsspec filesystem may be a class of the app's.
    options_pickle = pickle.dumps({f.name: getattr(options, f.name) for f in fields(Options)})
    payload = {"path": path, "lock_fd": lock_fd, "sys_path": sys.path, "options": options_pickle}
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_ROOT, env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [sys.executable, "-c", "from peewee_s3.helper import main; main()"], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, pass_fds=(lock_fd,), env=env,
        start_new_session=True)  # a terminal's Ctrl-C stops the app, which then leaves; not it
    try:
        try:
            proc.stdin.write(pickle.dumps(payload))
            proc.stdin.close()
        except BrokenPipeError:  # it died before reading them: its exit code says so below
            pass
        answer = proc.stdout.readline()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        proc.stdout.close()
    return _ready_or_raise(proc, answer)


def _ready_or_raise(proc: subprocess.Popen, answer: bytes) -> subprocess.Popen:
    try:
        said = json.loads(answer)
    except ValueError:
        said = None
    if isinstance(said, dict) and said.get("ready"):
        log.info("process %d replicates %s (replicator='process')", proc.pid,
                 said.get("path"))
        return proc
    proc.wait()
    if isinstance(said, dict) and "error" in said:
        raise _error(said["error"], said.get("message", ""))
    raise PeeweeS3Error(
        f"the replication helper (pid {proc.pid}) exited with "
        f"code {proc.returncode} before it was ready: its log is on this process's stderr")


def _error(name: str, message: str) -> PeeweeS3Error:
    """The helper's error, as the same class of peewee_s3.errors (its message says what to do)."""
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, PeeweeS3Error)):
        return PeeweeS3Error(f"{name}: {message}")
    return cls(message)


def main() -> None:
    # The app's processes leave first (a stop signal reaches them); this one follows once the
    # last has gone, so that their last commits are shipped.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    payload = pickle.load(sys.stdin.buffer)
    sys.path[:0] = [p for p in payload["sys_path"] if p not in sys.path]
    answer = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    _detach_stdout()
    host = _open(payload, answer)
    if host is None:
        sys.exit(1)
    serve(host)


def _detach_stdout() -> None:
    """The answer pipe is the only thing stdout was for: nothing else may write into it."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _open(payload: dict, answer):
    from .host import HostSession  # host.py imports this module
    try:
        options = Options(**pickle.loads(payload["options"]))
        if options.verbose:
            log_verbosely()
        else:
            logging.basicConfig(level=logging.WARNING,
                                format="peewee-s3 helper %(process)d: %(levelname)s %(message)s")
        host = HostSession(payload["path"], options, lock_fd=payload["lock_fd"], member=False)
        host.replicate()
    except BaseException as exc:  # noqa: BLE001 - told to the app, which raises it
        answer.write(json.dumps({"error": type(exc).__name__, "message": str(exc)}) + "\n")
        answer.close()
        return None
    answer.write(json.dumps({"ready": True, "path": payload["path"]}) + "\n")
    answer.close()
    return host


def serve(host, every: float = ALONE_EVERY) -> None:
    """Replicate (the scheduler's threads do) until no process has the file open, then end the
    session as the last process out does: ship, release the lease. A file deleted or replaced
    under it ends the session at once (nothing written to the new file is this session's)."""
    while not host.closed and not host.alone():
        try:
            host.check_file()
        except LocalStateError as exc:  # the members see it at their next write, and leave
            log.error("%s", exc)
            host.close_broken()
            return
        time.sleep(every)
    if not host.closed:
        host.shutdown()
