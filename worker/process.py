"""A Celery worker process on a queue of its own, started and stopped from Python.

The integration tests and the discovery benchmark each need a real worker that no other
worker (the stack's, say) can take tasks from, ready before the first task is sent.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from celery import Celery

from worker.app import app

__all__ = ["WorkerNotReady", "WorkerProcess", "start_worker"]

ROOT = Path(__file__).resolve().parents[1]
CONCURRENCY = 2
"""Two pool processes: what the stack's worker runs on a 2-core machine."""


class WorkerNotReady(RuntimeError):
    """The worker exited, or did not answer a ping in time."""


@dataclass(frozen=True)
class WorkerProcess:
    queue: str
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, timeout_s: float = 60) -> None:
        """Let the worker finish what it runs (SIGTERM is Celery's warm shutdown)."""
        self.process.terminate()
        self.process.wait(timeout=timeout_s)

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes at once, as an OOM kill or a lost
        node does: nothing is acknowledged, handed back or cleaned up."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


def start_worker(
    prefix: str,
    *,
    env: Mapping[str, str] | None = None,
    stderr: IO[bytes] | None = None,
    ready_timeout_s: float = 60,
    queue: str = "",
) -> WorkerProcess:
    """Start a worker on a fresh queue ``<prefix>-<random>`` (or on ``queue``: a worker
    started again after one was killed) and return once it answers.

    ``env`` adds to this process's environment (a FHIR server's address, say); ``stderr``
    takes its banner and log (inherited when None). The worker leads a process group of
    its own, so that :meth:`WorkerProcess.kill` takes its pool processes with it.
    """
    queue = queue or f"{prefix}-{uuid.uuid4().hex[:8]}"
    node = f"{queue}@localhost"
    process = subprocess.Popen(  # noqa: S603 -- this interpreter running Celery, fixed arguments
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "worker.app",
            "worker",
            "-Q",
            queue,
            "-n",
            node,
            "--concurrency",
            str(CONCURRENCY),
            "--loglevel",
            "WARNING",
            "--without-mingle",
            "--without-gossip",
        ],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL if stderr is not None else None,
        stderr=stderr,
        start_new_session=True,
    )
    deadline = time.monotonic() + ready_timeout_s
    broker = (env or {}).get("REDIS_URL")
    # A worker on another Redis (a test's own) is asked through an app of that broker:
    # the shared app would publish the ping on its own broker.
    control = Celery(broker=broker).control if broker else app.control
    while not control.ping(destination=[node], timeout=1.0):
        if process.poll() is not None:
            raise WorkerNotReady(f"the worker exited with code {process.returncode}")
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise WorkerNotReady(f"the worker did not answer within {ready_timeout_s:.0f}s")
    return WorkerProcess(queue, process)
