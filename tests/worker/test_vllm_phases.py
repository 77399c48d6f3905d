"""A vLLM engine's start timed by phase inside its model-runner processes
(worker/engine/vllm_phases.py): vLLM's worker methods are timed into the phases of
worker/load_phases.py and read back through collective_rpc. The real engine:
test_worker_vllm.py (its worker's heartbeat carries weights and kv_cache)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from worker.engine import vllm_phases
from worker.engine.vllm_engine import vllm_available

pytestmark = pytest.mark.skipif(vllm_available() is not None, reason="vLLM is not importable")


class FakeWorker:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def load_model(self, *, load_dummy_weights: bool = False) -> None:
        self.calls.append(f"load_model dummy={load_dummy_weights}")
        time.sleep(0.05)

    def compile_or_warm_up_model(self) -> float:
        self.calls.append("compile")
        time.sleep(0.02)
        return 1.5


@pytest.fixture
def wrapper(monkeypatch: pytest.MonkeyPatch) -> Any:
    from vllm.v1.worker.worker_base import WorkerWrapperBase

    for name in [*vllm_phases.PHASE_OF_METHOD, vllm_phases.READ_METHOD]:  # undone after
        if name in vars(WorkerWrapperBase):
            monkeypatch.setattr(WorkerWrapperBase, name, vars(WorkerWrapperBase)[name])
        else:
            monkeypatch.setattr(WorkerWrapperBase, name, None, raising=False)
            monkeypatch.delattr(WorkerWrapperBase, name)
    monkeypatch.setattr(vllm_phases, "_seconds", {})
    vllm_phases.install()
    vllm_phases.install()  # idempotent: not timed twice
    instance = WorkerWrapperBase.__new__(WorkerWrapperBase)
    instance.worker = FakeWorker()
    return instance


def test_worker_methods_are_timed_into_their_phases(wrapper: Any) -> None:
    wrapper.load_model(load_dummy_weights=True)
    assert wrapper.compile_or_warm_up_model() == 1.5  # results pass through
    assert wrapper.worker.calls == ["load_model dummy=True", "compile"]
    phases = getattr(wrapper, vllm_phases.READ_METHOD)()
    assert set(phases) == {"weights", "compile"}
    assert 0.05 <= phases["weights"] < 1.0
    assert 0.02 <= phases["compile"] < phases["weights"]


def test_a_failing_method_is_timed_and_raises(wrapper: Any) -> None:
    def broken(*, load_dummy_weights: bool = False) -> None:
        raise RuntimeError("bad checkpoint")

    wrapper.worker.load_model = broken
    with pytest.raises(RuntimeError, match="bad checkpoint"):
        wrapper.load_model()
    assert "weights" in vllm_phases.read_phases()


class FakeLLM:
    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.methods: list[str] = []

    async def collective_rpc(self, method: str) -> Any:
        self.methods.append(method)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


async def test_engine_phases_take_the_slowest_worker_per_phase() -> None:
    llm = FakeLLM([{"weights": 1.0, "kv_cache": 0.5}, {"weights": 2.0, "compile": 0.1}])
    phases = await vllm_phases.engine_phases(llm)
    assert phases == {"weights": 2.0, "kv_cache": 0.5, "compile": 0.1}
    assert llm.methods == [vllm_phases.READ_METHOD]


async def test_unreadable_phases_leave_the_load_untimed() -> None:
    assert await vllm_phases.engine_phases(FakeLLM(RuntimeError("no such method"))) == {}
