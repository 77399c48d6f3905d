"""Targets for processes started through worker/engine/vllm_processes.py's fork server:
a fork-server child unpickles its target by module name, so they live in an importable
module (tests/ is on the path), not in a test file."""

from __future__ import annotations

import os
import sys
import time
from multiprocessing.queues import SimpleQueue

from worker.engine.vllm_processes import FORK_SERVER


def report_environment(name: str, results: SimpleQueue[str | None]) -> None:
    """Put this process's value of ``name`` (None if unset) on ``results``."""
    results.put(os.environ.get(name))


def sleep_forever() -> None:
    time.sleep(3600)


def start_child_then_sleep() -> None:
    """Start a sleeping child through the fork server, print its pid, sleep (the test
    SIGKILLs this process and watches the child)."""
    child = FORK_SERVER.Process(target=sleep_forever, daemon=False)
    child.start()
    sys.stdout.write(f"{child.pid}\n")
    sys.stdout.flush()
    time.sleep(3600)


if __name__ == "__main__":
    start_child_then_sleep()
