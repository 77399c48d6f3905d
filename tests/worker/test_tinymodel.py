"""The project's tiny chat model: a deterministic, offline, loadable Hugging Face model."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from models.tinymodel import (
    BOS_TOKEN,
    COMPLETE_MARKER,
    DEFAULT_MODEL_NAME,
    EOS_TOKEN,
    IM_END_TOKEN,
    IM_START_TOKEN,
    PAD_TOKEN,
    build_tiny_model,
    default_model_dir,
    ensure_default_model,
)

REQUIRED_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Same path as the engine tests use: the build is idempotent, so whichever module
    # runs first builds it and the other gets it for free.
    return build_tiny_model(tmp_path_factory.getbasetemp() / DEFAULT_MODEL_NAME)


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True)


def test_layout_and_config(tiny_model_dir: Path) -> None:
    for name in REQUIRED_FILES:
        assert (tiny_model_dir / name).is_file(), name
    assert (tiny_model_dir / COMPLETE_MARKER).is_file()
    # No temp or stale directories are left beside the model.
    leftovers = [
        p for p in tiny_model_dir.parent.iterdir() if p.name.startswith(f".{DEFAULT_MODEL_NAME}")
    ]
    assert leftovers == []

    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["hidden_size"] // config["num_attention_heads"] >= 32
    assert config["head_dim"] == 32
    assert config["tie_word_embeddings"] is False
    assert config["initializer_range"] == pytest.approx(0.3)
    assert config["torch_dtype"] == "float32"
    assert config["num_key_value_heads"] == 2

    tok_config = json.loads((tiny_model_dir / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in tok_config["chat_template"]
    special = json.loads((tiny_model_dir / "special_tokens_map.json").read_text())
    assert special["bos_token"] == BOS_TOKEN
    assert special["eos_token"] == IM_END_TOKEN
    assert special["pad_token"] == PAD_TOKEN


def test_same_seed_same_bytes_other_seed_other_weights(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    again = build_tiny_model(tmp_path / "again", seed=0)
    other = build_tiny_model(tmp_path / "other", seed=1)
    weights = (tiny_model_dir / "model.safetensors").read_bytes()
    assert (again / "model.safetensors").read_bytes() == weights
    assert (again / "tokenizer.json").read_bytes() == (
        tiny_model_dir / "tokenizer.json"
    ).read_bytes()
    assert (other / "model.safetensors").read_bytes() != weights
    # The seed only changes the weights; the tokenizer is trained the same way.
    assert (other / "tokenizer.json").read_bytes() == (
        tiny_model_dir / "tokenizer.json"
    ).read_bytes()


def test_rebuild_is_skipped_when_complete(tiny_model_dir: Path) -> None:
    weights = tiny_model_dir / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    start = time.monotonic()
    assert build_tiny_model(tiny_model_dir) == tiny_model_dir
    assert time.monotonic() - start < 0.5
    assert weights.stat().st_mtime_ns == mtime


def test_incomplete_or_stale_directory_is_replaced(tmp_path: Path) -> None:
    out = tmp_path / "model"
    out.mkdir()
    (out / "config.json").write_text("{half written")
    (out / "leftover.bin").write_text("junk")
    build_tiny_model(out)
    assert not (out / "leftover.bin").exists()
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"

    # Different parameters: the marker no longer matches, so it is rebuilt.
    build_tiny_model(out, seed=5)
    digest_seed5 = (out / COMPLETE_MARKER).read_text()
    build_tiny_model(out, seed=0)
    assert (out / COMPLETE_MARKER).read_text() != digest_seed5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp dirs left

    # A plain file where the directory should be is replaced too.
    as_file = tmp_path / "file"
    as_file.write_text("not a model")
    build_tiny_model(as_file)
    assert (as_file / COMPLETE_MARKER).is_file()


def test_tokenizer_round_trip(tokenizer) -> None:  # type: ignore[no-untyped-def]
    texts = [
        "Hello, world! The answer is 42.",
        "  leading spaces, tabs\tand\nnewlines  ",
        "Unicode: café, naïve, Ελληνικά, 日本語, emoji 🚀🙂",
        "numbers 3.14159 and $19.99 (50%)",
    ]
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        assert ids[0] == tokenizer.bos_token_id  # raw prompts start with bos
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
    # BPE learned real merges: common English compresses well below one token per byte.
    sentence = "The quick brown fox jumps over the lazy dog and the answer is 42."
    assert len(tokenizer(sentence, add_special_tokens=False)["input_ids"]) < len(sentence) / 2
    for special in (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, IM_START_TOKEN, IM_END_TOKEN):
        ids = tokenizer(special, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, special
    assert len(tokenizer) == 512


def test_chat_template_renders(tokenizer, tiny_model_dir: Path) -> None:  # type: ignore[no-untyped-def]
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi!"},
    ]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<|begin_of_text|><|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
    )
    without = tokenizer.apply_chat_template(messages, tokenize=False)
    assert not without.endswith("assistant\n")
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    assert ids[0] == tokenizer.bos_token_id
    assert ids.count(tokenizer.convert_tokens_to_ids(IM_END_TOKEN)) == 2

    # <|im_end|> ends generation, so does <|end_of_text|>.
    gen_config = json.loads((tiny_model_dir / "generation_config.json").read_text())
    assert tokenizer.convert_tokens_to_ids(IM_END_TOKEN) in gen_config["eos_token_id"]
    assert tokenizer.convert_tokens_to_ids(EOS_TOKEN) in gen_config["eos_token_id"]
    assert tokenizer.eos_token == IM_END_TOKEN


def test_model_loads_and_runs(tiny_model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, local_files_only=True).eval()
    assert model.dtype == torch.float32
    with torch.inference_mode():
        logits = model(torch.tensor([[0, 50, 60, 70]])).logits
    assert logits.shape == (1, 4, 512)
    assert torch.isfinite(logits).all()
    # A large init range gives position-dependent predictions (a 0.02 init would not).
    assert len(set(logits[0].argmax(-1).tolist())) > 1


def test_default_model_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HELIOS_HOME", raising=False)
    expected = Path(os.path.expanduser("~/.cache/helios")) / "models" / "helios-tiny-chat"
    assert default_model_dir() == expected

    monkeypatch.setenv("HELIOS_HOME", str(tmp_path / "home"))
    assert default_model_dir() == tmp_path / "home" / "models" / "helios-tiny-chat"
    built = ensure_default_model()
    assert built == default_model_dir()
    assert (built / COMPLETE_MARKER).is_file()


def test_rejects_head_dim_below_32(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="head_dim"):
        build_tiny_model(tmp_path / "m", hidden_size=64, num_heads=4)
    assert not (tmp_path / "m").exists()
