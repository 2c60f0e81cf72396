"""The process's scheduler: jobs run on a bounded pool, never twice at once, when due or woken;
cancel waits for a run in progress; sockets are served by the one timer thread."""
import socket
import threading
import time

import pytest

from peewee_s3.scheduler import Job, Scheduler


@pytest.fixture
def make_scheduler():
    made = []

    def make(workers):
        scheduler = Scheduler(workers)
        scheduler._start()
        made.append(scheduler)
        return scheduler
    yield make
    for scheduler in made:
        scheduler.stop()


def wait_for(condition, timeout=30):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.005)


def test_a_job_woken_from_many_threads_never_runs_twice_at_once(make_scheduler):
    scheduler = make_scheduler(4)
    running, most, runs = [0], [0], []
    lock = threading.Lock()

    def run():
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.002)
        with lock:
            running[0] -= 1
            runs.append(1)
        return None  # runs again only when woken

    job = Job("busy", run)
    wakers = [threading.Thread(target=lambda: [scheduler.schedule(job) or time.sleep(0.001)
                                               for _ in range(50)]) for _ in range(4)]
    for waker in wakers:
        waker.start()
    for waker in wakers:
        waker.join()
    wait_for(lambda: job._running is None and job._due is None)
    assert most[0] == 1
    assert 1 <= len(runs) <= 200


def test_a_job_woken_while_it_runs_runs_again_and_one_that_returns_none_stops(make_scheduler):
    scheduler = make_scheduler(2)
    started, release, runs = threading.Event(), threading.Event(), []

    def run():
        runs.append(time.monotonic())
        if len(runs) == 1:
            started.set()
            release.wait(10)
        return None

    job = Job("once more", run)
    scheduler.schedule(job)
    started.wait(10)
    scheduler.schedule(job)  # while it runs: remembered, not lost
    release.set()
    wait_for(lambda: len(runs) == 2)
    time.sleep(0.1)
    assert len(runs) == 2


def test_cancel_waits_for_the_run_in_progress_and_nothing_runs_after(make_scheduler):
    scheduler = make_scheduler(2)
    started, runs = threading.Event(), []

    def run():
        started.set()
        time.sleep(0.2)
        runs.append("ended")
        return 0.0  # again at once, if it could

    job = Job("cancelled", run)
    scheduler.schedule(job)
    started.wait(10)
    scheduler.cancel(job)
    assert runs == ["ended"]
    scheduler.schedule(job)
    time.sleep(0.1)
    assert runs == ["ended"]


def test_a_job_that_raises_runs_again_later_and_the_pool_lives_on(monkeypatch, make_scheduler):
    monkeypatch.setattr("peewee_s3.scheduler.RETRY_AFTER_BUG", 0.01)
    scheduler = make_scheduler(1)
    calls = []

    def run():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug")
        return None

    scheduler.schedule(Job("buggy", run))
    wait_for(lambda: len(calls) == 2)
    other = []
    scheduler.schedule(Job("next", lambda: other.append(1)))
    wait_for(lambda: other == [1])


def test_datagrams_reach_their_listener_until_it_stops_listening(make_scheduler):
    scheduler = make_scheduler(1)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(b"\0peewee-s3-test-scheduler-%d" % id(listener))
    sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sender.bind(b"")  # an address of its own (Linux), which the listener is told
    heard, addresses = [], []
    scheduler.listen(listener, lambda data, address: (heard.append(data),
                                                      addresses.append(address)))
    sender.sendto(b"s", listener.getsockname())
    wait_for(lambda: heard == [b"s"])
    assert addresses == [sender.getsockname()]
    scheduler.unlisten(listener)
    sender.sendto(b"a", listener.getsockname())
    time.sleep(0.1)
    assert heard == [b"s"]
    listener.close()
    sender.close()
