"""scheduler: where this process's background work runs — one thread that waits on a timer heap
and on every doorbell socket, and a bounded pool of workers that run jobs when they are due.

A job (a replicator's tick, a member's try of the host lock, a replica's poll) runs on one
worker at a time, never twice at once, and says when it wants to run next; anyone may wake it
sooner. It owns no I/O of its own: the jobs do theirs. docs/HOSTS.md, "Where replication runs".
"""
from __future__ import annotations

import heapq
import itertools
import logging
import os
import queue
import selectors
import socket
import threading
import time
from typing import Any, Callable, Optional

log = logging.getLogger("peewee_s3")

# Worker threads of the process's pool: how many jobs run at once, whatever the number of
# databases. Read when the pool starts (the first database opens); PEEWEE_S3_WORKERS overrides.
# Few, since every one competes with the app's threads for the GIL: 1,000 databases taking a
# commit a second each (bench/tenants.py) got 824 commits/s through with 2 workers, 472 with
# 4 and 288 with 8 (docs/BENCHMARKS.md). More only help where storages may hang apart.
WORKERS = 2
RETRY_AFTER_BUG = 5.0  # seconds before a job that raised something unexpected runs again


_HANDED = object()  # a job's `_running` between the timer thread and a worker


class Job:
    """Work run on the pool: `run()` returns the seconds until it wants to run again, or None
    when it is done. The scheduler's lock guards every field but `name` and `run`."""

    def __init__(self, name: str, run: Callable[[], Optional[float]]) -> None:
        self.name, self.run = name, run
        self._due: Optional[float] = None    # monotonic time it is queued for (None: not)
        self._again: Optional[float] = None  # woken while it ran: run again at this time
        self._running: object = None  # the thread running it, _HANDED, or None
        self._cancelled = False

    def __repr__(self) -> str:
        return f"<Job {self.name}>"


class Scheduler:
    def __init__(self, workers: int) -> None:
        self.workers = workers
        # `_lock` guards the heap and the jobs' scheduling fields; `_ran` is notified whenever
        # a job's run ends (cancel waits on it).
        self._lock = threading.Lock()
        self._ran = threading.Condition(self._lock)
        self._heap: list = []  # (due, tie-breaker, job); entries whose due is stale are skipped
        self._order = itertools.count()
        self._ready: queue.SimpleQueue = queue.SimpleQueue()
        self._selector = selectors.DefaultSelector()
        self._bell, self._bell_rung = socket.socketpair()  # wakes the timer thread
        for end in (self._bell, self._bell_rung):
            end.setblocking(False)
        self._selector.register(self._bell_rung, selectors.EVENT_READ, None)
        self._threads: list = []
        self._stopping = False

    # -- jobs ------------------------------------------------------------------------------

    def schedule(self, job: Job, delay: float = 0.0) -> None:
        """Run `job` in `delay` seconds, or sooner if it is already due sooner. A job that is
        running runs again once it is done (at that time at the earliest)."""
        at = time.monotonic() + max(0.0, delay)
        with self._lock:
            if job._cancelled:
                return
            if job._running is not None:
                if job._again is None or at < job._again:
                    job._again = at
                return
            first = self._queue(job, at)
        if first:
            self._ring()

    def cancel(self, job: Job) -> None:
        """`job` never runs again; returns once a run in progress has ended (at once if it
        is the caller's own)."""
        with self._lock:
            job._cancelled, job._due, job._again = True, None, None
            while job._running is not None and job._running is not threading.current_thread():
                self._ran.wait()

    def _queue(self, job: Job, at: float) -> bool:
        """Under `_lock`: queue `job` for `at` unless it is due sooner; True if it is first."""
        if job._due is not None and job._due <= at:
            return False
        job._due = at
        heapq.heappush(self._heap, (at, next(self._order), job))
        return self._heap[0][2] is job

    # -- sockets ---------------------------------------------------------------------------

    def listen(self, sock: socket.socket, on_data: Callable[[bytes, Any], None]) -> None:
        """Call `on_data(data, sender's address)` (in the timer thread: it must not block)
        with each datagram that arrives on `sock`, a non-blocking datagram socket, until
        `unlisten`."""
        self._start()
        sock.setblocking(False)
        self._selector.register(sock, selectors.EVENT_READ, on_data)
        self._ring()

    def unlisten(self, sock: socket.socket) -> None:
        try:
            self._selector.unregister(sock)
        except (KeyError, ValueError):
            pass

    # -- threads ---------------------------------------------------------------------------

    def _start(self) -> None:
        with self._lock:
            if self._threads:
                return
            self._threads.append(threading.Thread(target=self._wait, daemon=True,
                                                  name="peewee-s3 scheduler"))
            self._threads += [threading.Thread(target=self._work, daemon=True,
                                               name=f"peewee-s3 worker {n + 1}")
                              for n in range(self.workers)]
            for thread in self._threads:
                thread.start()

    def stop(self) -> None:
        """End the threads (a run in progress first). The process's own scheduler is never
        stopped: its threads are daemons, and the databases' shutdowns cancel their jobs."""
        with self._lock:
            self._stopping, threads = True, list(self._threads)
        for _ in range(self.workers):
            self._ready.put(None)
        self._ring()
        for thread in threads:
            thread.join()

    def _ring(self) -> None:
        try:
            self._bell.send(b"!")
        except (BlockingIOError, OSError):
            pass  # already rung (its buffer is full): the timer thread is awake anyway

    def _wait(self) -> None:
        """The timer thread: hand due jobs to the workers; serve the sockets."""
        while not self._stopping:
            with self._lock:
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    at, _, job = heapq.heappop(self._heap)
                    if job._due == at and not job._cancelled:
                        job._due, job._running = None, _HANDED
                        self._ready.put(job)
                timeout = self._heap[0][0] - now if self._heap else None
            for key, _ in self._selector.select(timeout):
                if key.data is None:
                    _drain(key.fileobj)
                    continue
                for data, sender in _drain(key.fileobj):
                    try:
                        key.data(data, sender)
                    except Exception:  # a listener's bug must not stop every database
                        log.exception("a doorbell listener of peewee-s3 failed")

    def _work(self) -> None:
        while True:
            job = self._ready.get()
            if job is None:
                return
            with self._lock:
                if job._cancelled:
                    job._running = None
                    self._ran.notify_all()
                    continue
                job._running = threading.current_thread()
            try:
                delay = job.run()
            except Exception:
                log.exception("%s failed unexpectedly; it runs again in %.0f s", job.name,
                              RETRY_AFTER_BUG)
                delay = RETRY_AFTER_BUG
            first = False
            with self._lock:
                job._running = None
                self._ran.notify_all()
                again, job._again = job._again, None
                if not job._cancelled:
                    at = None if delay is None else time.monotonic() + delay
                    if again is not None and (at is None or again < at):
                        at = again
                    if at is not None:
                        first = self._queue(job, at)
            if first:
                self._ring()

    def threads(self) -> int:
        return len(self._threads)


def _drain(sock: socket.socket) -> list:
    """Every datagram waiting on `sock`, with its sender's address (a closed socket has
    none)."""
    data = []
    while True:
        try:
            data.append(sock.recvfrom(64))
        except (BlockingIOError, OSError):
            return data


_scheduler: Optional[Scheduler] = None
_scheduler_lock = threading.Lock()


def get() -> Scheduler:
    """The process's scheduler (its threads start with the first job or socket)."""
    global _scheduler
    with _scheduler_lock:
        if _scheduler is None:
            _scheduler = Scheduler(int(os.environ.get("PEEWEE_S3_WORKERS") or WORKERS))
        return _scheduler


def run_every(name: str, run: Callable[[], Optional[float]], first: float = 0.0) -> Job:
    """A job on the process's scheduler, first run in `first` seconds."""
    job = Job(name, run)
    scheduler = get()
    scheduler._start()
    scheduler.schedule(job, first)
    return job


def _forget_after_fork() -> None:
    """A forked child has none of its parent's threads: it starts a scheduler of its own."""
    global _scheduler, _scheduler_lock
    _scheduler, _scheduler_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)
