"""LoRA adapters on vLLM, the mapping only (no engine started): the engine arguments
and each request's LoRARequest."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.errors import FailedPreconditionError, InvalidArgumentError
from worker.engine.base import AdapterRef
from worker.engine.vllm_engine import vllm_available
from worker.engine.vllm_lora import LoraRequests, VllmLora

needs_vllm = pytest.mark.skipif(vllm_available() is not None, reason="vLLM is not installed")


def test_lora_is_off_unless_asked_for_and_then_sets_vllms_engine_arguments() -> None:
    assert VllmLora().engine_args() == {}
    assert VllmLora(max_loras=4, max_lora_rank=8, max_cpu_loras=6).engine_args() == {
        "enable_lora": True,
        "max_loras": 4,
        "max_lora_rank": 8,
        "max_cpu_loras": 6,
    }
    assert "max_cpu_loras" not in VllmLora(max_loras=2).engine_args()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_loras": -1}, "max_loras"),
        ({"max_loras": 2, "max_lora_rank": 0}, "max_lora_rank"),
        ({"max_loras": 4, "max_cpu_loras": 2}, "max_cpu_loras"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, int], match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        VllmLora(**kwargs)


@needs_vllm
def test_each_adapter_version_keeps_one_lora_id_and_its_path(tmp_path: Path) -> None:
    from vllm.lora.request import LoRARequest

    loras = LoraRequests(VllmLora(max_loras=2), "base")
    assert loras.request(None) is None
    one = AdapterRef("org/one", tmp_path / "one", "v1")
    two = AdapterRef("org/two", tmp_path / "two", "v1")
    first = loras.request(one)
    assert isinstance(first, LoRARequest)
    assert (first.lora_name, first.lora_path) == ("org/one@v1", str(tmp_path / "one"))
    second = loras.request(two)
    newer = loras.request(AdapterRef("org/one", tmp_path / "one-v2", "v2"))
    again = loras.request(one)
    ids = [r.lora_int_id for r in (first, second, newer, again)]
    assert ids[0] == ids[3] and len(set(ids[:3])) == 3 and min(ids) >= 1
    # vLLM holds the two most recently used (max_cpu_loras defaults to max_loras).
    assert loras.ids() == ("org/one",)
    loras.request(two)
    assert loras.ids() == ("org/one", "org/two")


def test_an_adapter_on_an_engine_without_lora_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FailedPreconditionError, match="--max-loras"):
        LoraRequests(VllmLora(), "base").request(AdapterRef("org/one", tmp_path))
