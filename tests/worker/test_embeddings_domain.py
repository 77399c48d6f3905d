"""Embeddings without a model: the request's validation (openai_compat.embeddings), the
wire conversions (openai_compat.embedding_protocol), what a model directory says about
pooling (worker.engine.pooling) and the dimensions rules shared by both engines."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from helios.v1 import inference_pb2 as pb

from openai_compat.embedding_protocol import (
    embedding_job_from_pb,
    embedding_job_to_pb,
    embedding_response,
    embedding_result_from_pb,
)
from openai_compat.embeddings import (
    MAX_EMBEDDING_INPUTS,
    EmbeddingResult,
    decode_base64,
    embedding_job,
    encode_base64,
    truncate_and_normalize,
)
from runtime.errors import FailedPreconditionError, InvalidArgumentError
from runtime.limits import MAX_PROMPT_BYTES
from worker.engine.pooling import (
    PoolingConfig,
    checked_dimensions,
    is_embedding_model,
    pooling_config,
)


@pytest.mark.parametrize(
    ("raw", "inputs"),
    [
        ("one text", ("one text",)),
        (["a", "b", "c"], ("a", "b", "c")),
        ([101, 2023.0, 102], ((101, 2023, 102),)),
        ([[1, 2], [3]], ((1, 2), (3,))),
    ],
)
def test_the_four_input_shapes(raw: Any, inputs: tuple[Any, ...]) -> None:
    job = embedding_job("m", raw)
    assert job.inputs == inputs
    assert (job.encoding_format, job.dimensions) == ("float", None)
    assert job.request_id.startswith("embd-")


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (None, "input: is required"),
        ("", "input: must not be an empty string"),
        ([], "input: must not be empty"),
        (["ok", ""], "input[1]: must not be an empty string"),
        (["ok", [1, 2]], "input: mixes strings and token-id lists"),
        ([[1], []], "input[1]: a list of token ids must not be empty"),
        ([1, -2], "input: token ids must be in"),
        ([1, 2.5], "input: token ids must be integers"),
        ([[1, True]], "input[0]: token ids must be integers"),
        ([["a"]], "input[0]: token ids must be integers"),
        ({"text": "x"}, "input: must be a string, a list"),
        ([{"a": 1}], "input[0]: must be a string or a list of token ids"),
        (["x"] * (MAX_EMBEDDING_INPUTS + 1), f"input: at most {MAX_EMBEDDING_INPUTS} inputs"),
        (["x" * (MAX_PROMPT_BYTES // 2 + 1)] * 2, "bytes of text are allowed together"),
    ],
)
def test_bad_inputs_name_the_field(raw: Any, field: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        embedding_job("m", raw)
    assert field in caught.value.message
    assert len(caught.value.message) < 200  # never quotes the input


def test_the_other_fields_are_checked() -> None:
    with pytest.raises(InvalidArgumentError, match=r"^model: is required"):
        embedding_job("", "x")
    with pytest.raises(InvalidArgumentError, match=r"^encoding_format: must be one of"):
        embedding_job("m", "x", encoding_format="int8")
    with pytest.raises(InvalidArgumentError, match=r"^dimensions: must be >= 1"):
        embedding_job("m", "x", dimensions=0)
    with pytest.raises(InvalidArgumentError, match=r"^user: at most"):
        embedding_job("m", "x", user="u" * 1000)
    job = embedding_job("m", "x", encoding_format="base64", dimensions=8, user="alice")
    assert (job.encoding_format, job.dimensions, job.user) == ("base64", 8, "alice")


def test_base64_is_little_endian_float32() -> None:
    vector = [0.5, -1.25, 3.0e-8, 1.0]
    text = encode_base64(vector)
    assert decode_base64(text) == pytest.approx(vector, rel=1e-7)
    assert text == "AAAAPwAAoL9Z2QAzAACAPw=="  # numpy.float32(...).tobytes() on any host
    with pytest.raises(ValueError):
        decode_base64("AAAA/w")


def test_truncation_renormalises() -> None:
    shorter = truncate_and_normalize([3.0, 4.0, 12.0], 2)
    assert shorter == pytest.approx([0.6, 0.8])
    assert truncate_and_normalize([0.0, 0.0, 1.0], 2) == [0.0, 0.0]


def test_protobuf_round_trip_and_openai_shape() -> None:
    params = json_format.ParseDict(
        {"model": "m", "input": [[5, 6], [7]], "encoding_format": "base64", "dimensions": 2},
        pb.EmbeddingParams(),
    )
    job = embedding_job_from_pb(params)
    assert job.inputs == ((5, 6), (7,)) and job.dimensions == 2
    again = embedding_job_from_pb(embedding_job_to_pb(job, "float"))
    assert (again.inputs, again.dimensions, again.encoding_format) == (job.inputs, 2, "float")

    result = EmbeddingResult([[0.25, -0.5], [1.0, 0.0]], prompt_tokens=3)
    as_base64 = embedding_response(job, result)
    body = json_format.MessageToDict(as_base64, preserving_proto_field_name=True)
    assert body["object"] == "list" and body["model"] == "m"
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    assert [d["object"] for d in body["data"]] == ["embedding", "embedding"]
    assert isinstance(body["data"][0]["embedding"], str)
    assert embedding_result_from_pb(as_base64).vectors == [[0.25, -0.5], [1.0, 0.0]]

    floats = embedding_job_from_pb(pb.EmbeddingParams(model="m", input=params.input))
    body = json_format.MessageToDict(embedding_response(floats, result))
    assert body["data"][1]["embedding"] == [1.0, 0.0]


def _write(directory: Path, files: dict[str, Any]) -> Path:
    for name, content in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content))
    return directory


_ST_MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    {
        "idx": 2,
        "name": "2",
        "path": "2_Normalize",
        "type": "sentence_transformers.models.Normalize",
    },
]


def test_a_sentence_transformers_directory(tmp_path: Path) -> None:
    model = _write(
        tmp_path,
        {
            "config.json": {"architectures": ["BertModel"], "max_position_embeddings": 512},
            "modules.json": _ST_MODULES,
            "1_Pooling/config.json": {"pooling_mode_mean_tokens": True},
            "sentence_bert_config.json": {"max_seq_length": 256},
        },
    )
    assert is_embedding_model(model)
    assert pooling_config(model) == PoolingConfig("mean", True, 256, None)


def test_cls_pooling_without_normalize_and_matryoshka(tmp_path: Path) -> None:
    model = _write(
        tmp_path,
        {
            "config.json": {
                "architectures": ["XLMRobertaModel"],
                "matryoshka_dimensions": [64, 32],
            },
            "modules.json": _ST_MODULES[:2],
            "1_Pooling/config.json": {"pooling_mode_cls_token": True},
        },
    )
    assert pooling_config(model) == PoolingConfig("cls", False, None, (32, 64))


def test_unsupported_pooling_is_refused(tmp_path: Path) -> None:
    model = _write(
        tmp_path,
        {
            "config.json": {"architectures": ["BertModel"]},
            "modules.json": _ST_MODULES,
            "1_Pooling/config.json": {"pooling_mode_max_tokens": True},
        },
    )
    with pytest.raises(FailedPreconditionError, match=r"pooling_mode_max_tokens"):
        pooling_config(model)


@pytest.mark.parametrize(
    ("architecture", "embeds"),
    [("LlamaForCausalLM", False), ("GPT2LMHeadModel", False), ("BertModel", True)],
)
def test_bare_encoders_are_embedding_models(
    tmp_path: Path, architecture: str, embeds: bool
) -> None:
    model = _write(tmp_path, {"config.json": {"architectures": [architecture]}})
    assert is_embedding_model(model) is embeds
    assert pooling_config(model).mode == "mean"


def test_dimensions_rules() -> None:
    plain = PoolingConfig()
    assert checked_dimensions("m", None, 384, plain) is None
    assert checked_dimensions("m", 384, 384, plain) is None  # its own length: a no-op
    with pytest.raises(InvalidArgumentError, match=r"^dimensions: model m gives 384-dim"):
        checked_dimensions("m", 128, 384, plain)
    any_length = PoolingConfig(matryoshka_dimensions=())
    assert checked_dimensions("m", 100, 384, any_length) == 100
    with pytest.raises(InvalidArgumentError, match=r"^dimensions: must be in \[1, 384\]"):
        checked_dimensions("m", 500, 384, any_length)
    listed = PoolingConfig(matryoshka_dimensions=(64, 128))
    assert checked_dimensions("m", 64, 384, listed) == 64
    with pytest.raises(InvalidArgumentError, match=r"^dimensions: model m allows 64, 128"):
        checked_dimensions("m", 100, 384, listed)


def test_unit_vectors_stay_unit_after_truncation() -> None:
    vector = [math.sin(i) for i in range(16)]
    norm = math.sqrt(sum(v * v for v in truncate_and_normalize(vector, 5)))
    assert norm == pytest.approx(1.0)
