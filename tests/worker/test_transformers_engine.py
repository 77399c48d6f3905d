"""The CPU reference engine against the real tiny model (no mocks of the model)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import torch

from models.tinymodel import DEFAULT_MODEL_NAME, build_tiny_model
from runtime.errors import (
    AlreadyExistsError,
    EngineDeadError,
    EngineError,
    HeliosError,
    InvalidArgumentError,
    NotFoundError,
)
from worker.engine import torch_step
from worker.engine import transformers_engine as te
from worker.engine.base import (
    ChatMessage,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    SamplingParams,
)
from worker.engine.transformers_engine import TransformersEngine

MESSAGES = (ChatMessage("user", "Tell me a story"),)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Same path as test_tinymodel uses; the build is idempotent, so it happens once.
    return build_tiny_model(tmp_path_factory.getbasetemp() / DEFAULT_MODEL_NAME)


@pytest_asyncio.fixture
async def engine(tiny_model_dir: Path) -> AsyncIterator[TransformersEngine]:
    # Function-scoped: the engine's asyncio primitives belong to one event loop, and
    # every test gets its own loop. Loading the tiny model takes a fraction of a second.
    eng = await TransformersEngine.load(tiny_model_dir, DEFAULT_MODEL_NAME)
    yield eng
    await eng.shutdown()


def chat(
    request_id: str = "r",
    messages: tuple[ChatMessage, ...] = MESSAGES,
    **sampling: Any,
) -> GenerationRequest:
    return GenerationRequest(
        request_id=request_id, sampling=SamplingParams(**sampling), messages=messages
    )


async def collect(eng: TransformersEngine, request: GenerationRequest) -> list[GenerationChunk]:
    return [chunk async for chunk in eng.generate(request)]


def ids_of(chunks: list[GenerationChunk]) -> list[int]:
    return [i for c in chunks for i in c.token_ids]


def text_of(chunks: list[GenerationChunk]) -> str:
    return "".join(c.text for c in chunks)


@pytest.mark.asyncio
async def test_load_reports_its_weights_phase(engine: TransformersEngine) -> None:
    # Reading the tokenizer and weights is the reference engine's whole start (issue 14).
    assert set(engine.load_phases) == {"weights"}
    assert engine.load_phases["weights"] > 0


async def test_greedy_is_deterministic_and_varied(engine: TransformersEngine) -> None:
    first = await collect(engine, chat(max_tokens=20, temperature=0.0))
    second = await collect(engine, chat(max_tokens=20, temperature=0.0))
    ids = ids_of(first)
    assert ids == ids_of(second)
    assert len(ids) == 20
    assert len(set(ids)) >= 5, f"greedy output degenerates into repeats: {ids}"
    assert first[-1].finish_reason == FinishReason.LENGTH


@pytest.mark.asyncio
async def test_seeded_sampling_is_reproducible(engine: TransformersEngine) -> None:
    a = await collect(engine, chat(max_tokens=20, temperature=1.0, seed=1234))
    b = await collect(engine, chat(max_tokens=20, temperature=1.0, seed=1234))
    c = await collect(engine, chat(max_tokens=20, temperature=1.0, seed=4321))
    assert ids_of(a) == ids_of(b)
    assert text_of(a) == text_of(b)
    assert ids_of(a) != ids_of(c)


@pytest.mark.asyncio
async def test_filters_that_keep_one_token_equal_greedy(engine: TransformersEngine) -> None:
    greedy = ids_of(await collect(engine, chat(max_tokens=12, temperature=0.0)))
    top_k_1 = ids_of(await collect(engine, chat(max_tokens=12, temperature=1.0, top_k=1)))
    tiny_p = ids_of(await collect(engine, chat(max_tokens=12, temperature=1.0, top_p=1e-6)))
    assert top_k_1 == greedy
    assert tiny_p == greedy


@pytest.mark.asyncio
async def test_max_tokens_gives_length(engine: TransformersEngine) -> None:
    chunks = await collect(engine, chat(max_tokens=7, temperature=0.0))
    assert chunks[-1].finish_reason == FinishReason.LENGTH
    assert chunks[-1].completion_tokens == 7
    assert len(ids_of(chunks)) == 7
    # Running counts on every chunk; only the last one is final.
    assert [c.completion_tokens for c in chunks] == list(range(1, 8))
    assert all(c.finish_reason is None for c in chunks[:-1])


@pytest.mark.asyncio
async def test_usage_counts_rendered_prompt(engine: TransformersEngine) -> None:
    tokenizer = engine._tokenizer
    assert tokenizer is not None
    convo = [{"role": m.role, "content": m.content} for m in MESSAGES]
    expected = len(
        tokenizer.apply_chat_template(convo, add_generation_prompt=True, return_dict=False)
    )
    request = chat(max_tokens=3, temperature=0.0)
    assert engine.count_tokens(request) == expected
    chunks = await collect(engine, request)
    assert all(c.prompt_tokens == expected for c in chunks)

    raw = GenerationRequest("raw", SamplingParams(max_tokens=3, temperature=0.0), prompt="Hello")
    raw_ids = tokenizer("Hello")["input_ids"]
    assert raw_ids[0] == tokenizer.bos_token_id
    assert engine.count_tokens(raw) == len(raw_ids)
    assert (await collect(engine, raw))[-1].prompt_tokens == len(raw_ids)


@pytest.mark.asyncio
async def test_deltas_concatenate_to_decoded_text(engine: TransformersEngine) -> None:
    tokenizer = engine._tokenizer
    assert tokenizer is not None
    # Sampling at a high temperature produces plenty of byte tokens that only form a
    # character together: the held-back partial characters must come out right.
    for seed in (1, 2, 3):
        chunks = await collect(engine, chat(f"s{seed}", max_tokens=40, temperature=1.5, seed=seed))
        ids = ids_of(chunks)
        assert text_of(chunks) == tokenizer.decode(ids, skip_special_tokens=True)
    greedy = await collect(engine, chat(max_tokens=40, temperature=0.0))
    assert text_of(greedy) == tokenizer.decode(ids_of(greedy), skip_special_tokens=True)


@pytest.mark.asyncio
async def test_stop_string_truncates(engine: TransformersEngine) -> None:
    reference = text_of(await collect(engine, chat(max_tokens=40, temperature=0.0)))
    # A printable ASCII 3-character piece from the middle of the greedy output.
    start = next(
        i
        for i in range(8, len(reference) - 3)
        if all(ch.isascii() and ch.isprintable() for ch in reference[i : i + 3])
    )
    stop = reference[start : start + 3]
    cut = reference.find(stop)

    chunks = await collect(engine, chat(max_tokens=40, temperature=0.0, stop=("zzzzqq", stop)))
    text = text_of(chunks)
    assert text == reference[:cut]
    assert stop not in text
    assert chunks[-1].finish_reason == FinishReason.STOP
    assert chunks[-1].completion_tokens < 40
    # No delta ever carried part of the stop string past the cut.
    assert all(stop not in c.text for c in chunks)


@pytest.mark.asyncio
async def test_eos_token_stops(engine: TransformersEngine) -> None:
    ids = ids_of(await collect(engine, chat(max_tokens=10, temperature=0.0)))
    third = ids[2]
    assert third not in ids[:2]
    # Declare the third greedy token an end-of-sequence token for this engine.
    engine.eos_token_ids = frozenset({third})
    chunks = await collect(engine, chat(max_tokens=10, temperature=0.0))
    assert chunks[-1].finish_reason == FinishReason.STOP
    assert chunks[-1].completion_tokens == 3
    assert ids_of(chunks) == ids[:3]


@pytest.mark.asyncio
async def test_closing_the_stream_stops_work(engine: TransformersEngine) -> None:
    stream = engine.generate(chat("close-me", max_tokens=1000, temperature=0.0))
    for _ in range(3):
        await anext(stream)
    assert engine.stats().running_requests == 1
    await stream.aclose()

    stats = engine.stats()
    assert stats.aborted_requests_total == 1
    assert stats.running_requests == 0
    produced = stats.generated_tokens_total
    assert produced == 3
    await asyncio.sleep(0.1)
    assert engine.stats().generated_tokens_total == produced
    # The request id is free again.
    assert (await collect(engine, chat("close-me", max_tokens=1)))[-1].completion_tokens == 1


@pytest.mark.asyncio
async def test_cancelling_the_consumer_stops_work(engine: TransformersEngine) -> None:
    seen = asyncio.Event()

    async def consume() -> None:
        async for chunk in engine.generate(chat("cancel-me", max_tokens=1000, temperature=0.0)):
            if chunk.completion_tokens >= 2:
                seen.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(seen.wait(), timeout=10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.stats().aborted_requests_total == 1
    # A step that was computing when the task was cancelled may still finish in its
    # thread; the slot is freed right after.
    for _ in range(100):
        if engine.stats().running_requests == 0:
            break
        await asyncio.sleep(0.01)
    assert engine.stats().running_requests == 0
    produced = engine.stats().generated_tokens_total
    await asyncio.sleep(0.1)
    assert engine.stats().generated_tokens_total == produced < 1000


@pytest.mark.asyncio
async def test_abort_ends_stream_with_abort(engine: TransformersEngine) -> None:
    await engine.abort("unknown-id")  # ignored
    chunks: list[GenerationChunk] = []
    async for chunk in engine.generate(chat("to-abort", max_tokens=1000, temperature=0.0)):
        chunks.append(chunk)
        if len(chunks) == 3:
            await engine.abort("to-abort")
    assert chunks[-1].finish_reason == FinishReason.ABORT
    assert chunks[-1].completion_tokens == 3
    assert len(chunks) == 4
    assert engine.stats().aborted_requests_total == 1
    assert engine.stats().running_requests == 0
    tokenizer = engine._tokenizer
    assert tokenizer is not None
    assert text_of(chunks) == tokenizer.decode(ids_of(chunks), skip_special_tokens=True)


@pytest.mark.asyncio
async def test_concurrency_limit_and_abort_while_waiting(tiny_model_dir: Path) -> None:
    eng = await TransformersEngine.load(tiny_model_dir, DEFAULT_MODEL_NAME, max_concurrency=1)
    assert eng.max_running_requests == 1  # the worker's admission queue holds the rest
    try:
        first = eng.generate(chat("first", max_tokens=50, temperature=0.0))
        await anext(first)  # "first" now holds the only slot

        queued_chunks: list[GenerationChunk] = []

        async def run_queued(request_id: str) -> None:
            async for chunk in eng.generate(chat(request_id, max_tokens=5, temperature=0.0)):
                queued_chunks.append(chunk)

        second = asyncio.create_task(run_queued("second"))
        third = asyncio.create_task(run_queued("third"))
        for _ in range(100):
            if eng.stats().waiting_requests == 2:
                break
            await asyncio.sleep(0.01)
        stats = eng.stats()
        assert (stats.running_requests, stats.waiting_requests) == (1, 2)

        with pytest.raises(AlreadyExistsError):
            await anext(eng.generate(chat("second", max_tokens=5)))

        await eng.abort("third")
        await asyncio.wait_for(third, timeout=5)
        assert [c.finish_reason for c in queued_chunks] == [FinishReason.ABORT]
        assert queued_chunks[0].completion_tokens == 0
        assert eng.stats().waiting_requests == 1
        queued_chunks.clear()

        rest = [chunk async for chunk in first]
        assert rest[-1].finish_reason == FinishReason.LENGTH
        await asyncio.wait_for(second, timeout=10)
        assert queued_chunks[-1].finish_reason == FinishReason.LENGTH
        stats = eng.stats()
        assert (stats.running_requests, stats.waiting_requests) == (0, 0)
        assert stats.aborted_requests_total == 1
        assert stats.generated_tokens_total == 55
    finally:
        await eng.shutdown()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("request_", "match"),
    [
        (GenerationRequest("x", SamplingParams()), "exactly one of prompt, prompt_token_ids and"),
        (GenerationRequest("x", SamplingParams(), prompt="a", messages=MESSAGES), "exactly one"),
        (GenerationRequest("x", SamplingParams(), messages=()), "messages must not be empty"),
        (chat(max_tokens=0), "max_tokens"),
        (chat(temperature=-1.0), "temperature"),
        (chat(temperature=float("nan")), "temperature"),
        (chat(top_p=0.0), "top_p"),
        (chat(top_p=1.5), "top_p"),
        (chat(top_k=-1), "top_k"),
        (chat(stop=("",)), "stop"),
        (chat(max_tokens=2048), r"messages has \d+ tokens and max_tokens is 2048"),
        (
            GenerationRequest("x", SamplingParams(max_tokens=10), prompt="word " * 2100),
            r"prompt has \d+ tokens",
        ),
        (GenerationRequest("", SamplingParams(), prompt="hi"), "request_id"),
    ],
)
async def test_invalid_requests(
    engine: TransformersEngine, request_: GenerationRequest, match: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        await collect(engine, request_)
    stats = engine.stats()
    assert (stats.running_requests, stats.waiting_requests) == (0, 0)


@pytest.mark.asyncio
async def test_count_tokens_validates(engine: TransformersEngine) -> None:
    with pytest.raises(InvalidArgumentError):
        engine.count_tokens(GenerationRequest("x", SamplingParams(), prompt="a", messages=MESSAGES))


@pytest.mark.asyncio
async def test_load_errors(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        await TransformersEngine.load(tmp_path / "missing", "m")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotFoundError, match=r"config\.json"):
        await TransformersEngine.load(tmp_path / "empty", "m")
    with pytest.raises(InvalidArgumentError, match="dtype"):
        await TransformersEngine.load(tiny_model_dir, "m", dtype="int3")

    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_model_dir, corrupt)
    (corrupt / "config.json").write_text("this is { not json")
    with pytest.raises(HeliosError, match="cannot load model"):
        await TransformersEngine.load(corrupt, "m")

    truncated = tmp_path / "truncated"
    shutil.copytree(tiny_model_dir, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(HeliosError, match="cannot load model"):
        await TransformersEngine.load(truncated, "m")


@pytest.mark.asyncio
async def test_step_failure_fails_request_only(
    engine: TransformersEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(te, "forward_sample_decode", broken)
    with pytest.raises(EngineError, match="generation failed"):
        await collect(engine, chat(max_tokens=3))
    await engine.check_health()  # still healthy
    assert engine.stats().running_requests == 0
    monkeypatch.undo()
    assert (await collect(engine, chat(max_tokens=2)))[-1].completion_tokens == 2


@pytest.mark.asyncio
async def test_out_of_memory_kills_engine(
    engine: TransformersEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def oom(*args: Any, **kwargs: Any) -> Any:
        raise torch.OutOfMemoryError("out of memory")

    bystander = engine.generate(chat("bystander", max_tokens=100, temperature=0.0))
    await anext(bystander)
    monkeypatch.setattr(te, "forward_sample_decode", oom)
    with pytest.raises(EngineDeadError):
        await collect(engine, chat(max_tokens=3))
    with pytest.raises(EngineDeadError):
        await anext(bystander)  # other requests end too instead of running on
    with pytest.raises(EngineDeadError):
        await engine.check_health()
    with pytest.raises(EngineDeadError):
        await collect(engine, chat(max_tokens=3))


@pytest.mark.asyncio
async def test_shutdown(engine: TransformersEngine) -> None:
    await engine.check_health()
    running = engine.generate(chat("live", max_tokens=1000, temperature=0.0))
    await anext(running)
    await engine.shutdown()
    assert engine._model is None and engine._tokenizer is None
    with pytest.raises(EngineDeadError):
        await engine.check_health()
    with pytest.raises(EngineDeadError):
        await anext(running)  # the live request ends, it does not hang
    with pytest.raises(EngineDeadError):
        await collect(engine, chat(max_tokens=3))
    with pytest.raises(EngineDeadError):
        engine.count_tokens(chat())
    await engine.shutdown()  # idempotent


# ---------------------------------------------------- degenerate sampling values (issue 16)

VOCAB = 50
NAN = float("nan")
INF = float("inf")


def _logits(seed: int = 0) -> torch.Tensor:
    return torch.randn(VOCAB, generator=torch.Generator().manual_seed(seed)) * 5


@pytest.mark.parametrize(
    "sampling",
    [
        SamplingParams(temperature=1e-45),  # the report: 1e-45 once gave NaN and a 500
        SamplingParams(temperature=float(torch.tensor(1e-45, dtype=torch.float32))),
        SamplingParams(temperature=9.99e-6),  # just under the epsilon
        SamplingParams(temperature=0.0),
    ],
)
def test_tiny_temperatures_are_greedy(sampling: SamplingParams) -> None:
    assert sampling.greedy
    for seed in range(5):
        logits = _logits(seed)
        generator = torch.Generator().manual_seed(seed)
        assert torch_step.sample(logits, sampling, generator) == int(torch.argmax(logits))


@pytest.mark.parametrize(
    "sampling",
    [
        SamplingParams(temperature=1e-5),  # the smallest temperature that samples
        SamplingParams(temperature=1e-4, top_k=3),
        SamplingParams(temperature=2.0),
        SamplingParams(temperature=1e30),  # huge: uniform, never NaN
        SamplingParams(temperature=3.0e38),
        SamplingParams(temperature=1.0, top_p=1e-9),
        SamplingParams(temperature=1e30, top_p=1e-9),
        SamplingParams(temperature=1e-5, top_p=1e-9, top_k=1),
        SamplingParams(temperature=1.0, top_k=2**31 - 1),
        SamplingParams(temperature=1.0, seed=-(2**63)),
        SamplingParams(temperature=1.0, seed=2**63 - 1),
    ],
)
def test_extreme_sampling_values_give_valid_tokens(sampling: SamplingParams) -> None:
    generator = torch_step.make_generator(sampling)
    assert generator is not None
    for seed in range(20):
        token = torch_step.sample(_logits(seed), sampling, generator)
        assert 0 <= token < VOCAB


def test_tiny_top_p_keeps_only_the_most_likely_token() -> None:
    logits = _logits(3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(10):
        token = torch_step.sample(logits, SamplingParams(temperature=1.0, top_p=1e-9), generator)
        assert token == int(torch.argmax(logits))


@pytest.mark.parametrize("temperature", [0.0, 1e-45, 1.0, 1e30])
def test_non_finite_logits_never_reach_the_softmax(temperature: float) -> None:
    sampling = SamplingParams(temperature=temperature, top_p=0.9, top_k=10)
    generator = torch.Generator().manual_seed(1)
    # Some NaN: a NaN token is never picked.
    logits = _logits(1)
    logits[::2] = NAN
    for _ in range(20):
        token = torch_step.sample(logits, sampling, generator)
        assert 0 <= token < VOCAB and token % 2 == 1
    # +inf tokens are the only candidates.
    logits = _logits(2)
    logits[7] = INF
    logits[11] = INF
    logits[0] = NAN
    for _ in range(20):
        assert torch_step.sample(logits, sampling, generator) in (7, 11)
    # -inf everywhere but one token.
    logits = torch.full((VOCAB,), -INF)
    logits[5] = -1e30
    assert torch_step.sample(logits, sampling, generator) == 5
    # Nothing finite at all (a broken step): still a token id in range, no exception.
    for bad in (torch.full((VOCAB,), NAN), torch.full((VOCAB,), -INF)):
        assert 0 <= torch_step.sample(bad, sampling, generator) < VOCAB
    # Half-precision logits at the edge of their range.
    logits = torch.full((VOCAB,), 65504.0, dtype=torch.float16)
    logits[0] = -65504.0
    assert 1 <= torch_step.sample(logits, sampling, generator) < VOCAB


@pytest.mark.asyncio
async def test_degenerate_temperature_generates_like_greedy(engine: TransformersEngine) -> None:
    greedy = await collect(engine, chat(max_tokens=12, temperature=0.0))
    for temperature in (1e-45, 1e-30, 1e-6):
        tiny = await collect(engine, chat(max_tokens=12, temperature=temperature, seed=7))
        assert ids_of(tiny) == ids_of(greedy)
        assert text_of(tiny) == text_of(greedy)
    await engine.check_health()


@pytest.mark.asyncio
async def test_extreme_but_valid_sampling_completes(engine: TransformersEngine) -> None:
    for sampling in (
        {"temperature": 1e30},
        {"temperature": 1.0, "top_p": 1e-9},
        {"temperature": 1e-5, "top_k": 2**31 - 1},
        {"temperature": 1.5, "seed": -(2**63)},
    ):
        chunks = await collect(engine, chat(max_tokens=6, ignore_eos=True, **sampling))
        assert chunks[-1].finish_reason == FinishReason.LENGTH
        assert all(0 <= i < engine._vocab_limit for i in ids_of(chunks))
    await engine.check_health()


@pytest.mark.asyncio
async def test_prompt_ids_outside_the_model_are_invalid_argument(
    engine: TransformersEngine,
) -> None:
    # A tokenizer that knows more (added) tokens than the model has embeddings for.
    engine._num_embeddings = 10
    with pytest.raises(InvalidArgumentError, match="outside the vocabulary"):
        await collect(engine, chat(max_tokens=2))
    assert engine.stats().running_requests == 0
    await engine.check_health()
