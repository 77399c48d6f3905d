"""zerocopy: header validation against hostile files, equality with safetensors, zero copy."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file as st_load_file
from safetensors.torch import save_file

import zerocopy
from zerocopy import CheckpointError, SafetensorsHeaderError


def _write_raw(path: Path, header: object, data: bytes, *, length: int | None = None) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(raw) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + raw + data)
    return path


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "a": torch.randn(17, 33, generator=g),
        "b": torch.randn(5, generator=g).to(torch.bfloat16),
        "c": torch.randint(-100, 100, (3, 4, 5), generator=g, dtype=torch.int64),
        "d": torch.randn(8, 8, generator=g).to(torch.float16),
        "e": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 4),
        "u8": torch.arange(7, dtype=torch.uint8),
    }


def test_round_trip_equals_safetensors_and_is_zero_copy(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_file(_tensors(), str(path), metadata={"format": "pt"})
    mapped = zerocopy.map_file(path)
    ours = mapped.tensors()
    ref = st_load_file(str(path))
    assert set(ours) == set(ref)
    for name, tensor in ref.items():
        assert ours[name].dtype == tensor.dtype
        assert ours[name].shape == tensor.shape
        assert torch.equal(ours[name], tensor), name
        if tensor.numel():
            assert mapped.contains(ours[name]), f"{name} was copied"
    assert mapped.copied_bytes == 0
    assert mapped.metadata == {"format": "pt"}


def test_populate_then_writes_are_private(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_file({"w": torch.ones(1024, 1024)}, str(path))
    before = path.read_bytes()
    mapped = zerocopy.map_file(path)
    mapped.populate(threads=4)
    w = mapped.tensors()["w"]
    assert mapped.contains(w)
    w.mul_(3)  # copy-on-write: the file must not change
    assert float(w[0, 0]) == 3.0
    assert path.read_bytes() == before


def _write_sharded(tmp_path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    d = tmp_path / "sharded"
    d.mkdir()
    names = sorted(tensors)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half]}
    shards["model-00002-of-00002.safetensors"] = names[half:]
    weight_map = {}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(d / shard))
        weight_map.update({k: shard for k in keys})
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    return d


def test_sharded_checkpoint_matches(tmp_path: Path) -> None:
    tensors = _tensors()
    d = _write_sharded(tmp_path, tensors)
    state, mapped = zerocopy.load_checkpoint(d, populate=True)
    assert len(mapped) == 2
    assert set(state) == set(tensors)
    for shard in mapped:
        for name, ref in st_load_file(str(shard.path)).items():
            assert torch.equal(state[name], ref)
            if ref.numel():
                assert shard.contains(state[name])


def test_sharded_missing_shard_and_wrong_index(tmp_path: Path) -> None:
    d = _write_sharded(tmp_path, _tensors())
    index = json.loads((d / "model.safetensors.index.json").read_text())
    index["weight_map"]["a"] = "model-00002-of-00002.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="index says"):
        zerocopy.load_checkpoint(d)
    index["weight_map"]["a"] = "../escape.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="bad shard"):
        zerocopy.load_checkpoint(d)
    (d / "model-00001-of-00002.safetensors").unlink()
    index["weight_map"]["a"] = "model-00001-of-00002.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="missing"):
        zerocopy.load_checkpoint(d)


GOOD = {"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}


@pytest.mark.parametrize(
    ("header", "data", "length", "match"),
    [
        (GOOD, b"\0" * 8, 2**62, "exceeds"),
        (GOOD, b"\0" * 8, 10_000, "past the end"),
        (GOOD, b"\0" * 8, 0, "length is 0"),
        (b"{not json", b"", None, "not valid JSON"),
        (b"[1, 2]", b"", None, "not a JSON object"),
        ({"x": {"dtype": "F33", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, None, "dtype"),
        ({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, None, "span"),
        ({"x": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, None, "shape"),
        ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, None, "outside"),
        ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, b"\0" * 8, None, "outside"),
        ({"x": {"dtype": "F32", "shape": [2], "data_offsets": "0-8"}}, b"\0" * 8, None, "offsets"),
        (
            {
                "x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "y": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            b"\0" * 12,
            None,
            "overlaps",
        ),
        (
            {
                "x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                "y": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]},
            },
            b"\0" * 12,
            None,
            "hole",
        ),
        (GOOD, b"\0" * 16, None, "belong to no tensor"),
        ({"__metadata__": {"a": 1}, **GOOD}, b"\0" * 8, None, "__metadata__"),
        ({"x": "nope"}, b"", None, "not an object"),
    ],
)
def test_hostile_headers_are_rejected(
    tmp_path: Path, header: object, data: bytes, length: int | None, match: str
) -> None:
    path = _write_raw(tmp_path / "bad.safetensors", header, data, length=length)
    with pytest.raises(SafetensorsHeaderError, match=match):
        zerocopy.map_file(path)
    with pytest.raises(ValueError):  # the error is a ValueError for generic callers
        zerocopy.load_file(path)


def test_short_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "short.safetensors"
    path.write_bytes(b"\1\0\0")
    with pytest.raises(SafetensorsHeaderError, match="shorter than 8"):
        zerocopy.map_file(path)


def _tiny_llama(tmp_path: Path, *, tied: bool, shard: str | None) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tied,
    )
    torch.manual_seed(1)
    model = LlamaForCausalLM(config)
    out = tmp_path / f"llama-{tied}-{shard}"
    if shard:
        model.save_pretrained(out, max_shard_size=shard)
    else:
        model.save_pretrained(out)
    return out


@pytest.mark.parametrize(("tied", "shard"), [(True, None), (False, "40KB")])
def test_load_pretrained_matches_from_pretrained(
    tmp_path: Path, tied: bool, shard: str | None
) -> None:
    from transformers import AutoModelForCausalLM

    d = _tiny_llama(tmp_path, tied=tied, shard=shard)
    if shard:
        assert (d / "model.safetensors.index.json").exists()
    ours = zerocopy.load_pretrained(d)
    ref = AutoModelForCausalLM.from_pretrained(d, local_files_only=True)
    ids = torch.tensor([[1, 5, 9, 3, 7]])
    with torch.no_grad():
        assert torch.allclose(ours(ids).logits, ref(ids).logits, atol=1e-6)
    emb = ours.get_input_embeddings().weight
    head = ours.get_output_embeddings().weight
    assert (emb.data_ptr() == head.data_ptr()) is tied
    mapped = ours.zerocopy_mappings
    for name, param in ours.named_parameters():
        assert any(m.contains(param) for m in mapped), f"{name} is not on a mapping"
