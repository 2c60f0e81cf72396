"""processes: starting and stopping the bench's child processes, and reading their peak RSS.

Children get an environment without this machine's AWS settings (Litestream will not start
while AWS_CA_BUNDLE is set) and with the repository on PYTHONPATH (`python -m bench.<module>`).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

KEY = SECRET = "testing"
REGION = "us-east-1"
# Shared with bench/child.py, which must not import boto3 (bench.servers) into the process it
# measures.
PRAGMAS = {"synchronous": "normal", "busy_timeout": 10000}  # every system, plus WAL mode
PREFIX = "bench"  # where in its bucket each system keeps its objects


def clean_aws_env() -> dict:
    """This machine's environment without any AWS setting but the bench's own credentials."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET, AWS_REGION=REGION,
               AWS_CONFIG_FILE="/nonexistent/aws", AWS_SHARED_CREDENTIALS_FILE="/nonexistent/aws",
               AWS_EC2_METADATA_DISABLED="true")
    return env


def python_module(module: str, *args: str, **popen) -> subprocess.Popen:
    """`python -m bench.<module> args...` as a child process."""
    return subprocess.Popen([sys.executable, "-m", f"bench.{module}", *args],
                            env=python_env(), **popen)


def python_env() -> dict:
    """A Python child's environment: the bench's credentials, and its modules' bytecode cached
    as an installed package has it (this machine sets PYTHONDONTWRITEBYTECODE, which would
    compile them again in every child, some inside a timed step)."""
    env = dict(clean_aws_env(), PYTHONPATH=repo_root())
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def stop_process(process: subprocess.Popen, timeout: float) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def peak_rss(pid: int = 0) -> int:
    """A process's peak RSS in bytes so far: VmHWM of /proc/<pid>/status (0: this process).

    Not getrusage's ru_maxrss: Linux carries the parent's high-water mark over fork and exec,
    so a child started by a large bench would seem as large as the bench.
    """
    with open(f"/proc/{pid or 'self'}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


def wait_peak_rss(process: subprocess.Popen, timeout: float, poll: float = 0.01) -> int:
    """Wait for a child, sampling its peak RSS until it exits; returns the last sample (the
    process's own high-water mark, missing at most its last `poll` seconds)."""
    deadline = time.monotonic() + timeout
    peak = 0
    while process.poll() is None:
        try:
            peak = max(peak, peak_rss(process.pid))
        except (FileNotFoundError, ProcessLookupError, RuntimeError):
            pass  # it is exiting: /proc has no memory figures for a zombie
        if time.monotonic() > deadline:
            process.kill()
        time.sleep(poll)
    return peak
