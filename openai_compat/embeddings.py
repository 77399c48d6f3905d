"""OpenAI's embeddings request, on plain Python values: validation, and the vectors'
encodings. Domain only (no protobuf).

An input is a string, a list of strings, a list of token ids or a list of lists of token
ids, as OpenAI and vLLM take it. Sizes are checked before anything tokenizes: at most
:data:`MAX_EMBEDDING_INPUTS` inputs, their text together at most
:data:`runtime.limits.MAX_PROMPT_BYTES`, their token ids together at most
:data:`MAX_EMBEDDING_TOKEN_IDS`. Whether ``dimensions`` suits the model is the engine's to
say (it knows whether the model was trained for shorter vectors).
"""

from __future__ import annotations

import base64
import math
import struct
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from runtime.errors import InvalidArgumentError
from runtime.limits import MAX_ID_BYTES, MAX_PROMPT_BYTES

# OpenAI's own limit on the inputs of one request.
MAX_EMBEDDING_INPUTS = 2048
# Token ids of all inputs together (each id is a few bytes of JSON; ~1M tokens is far past
# what one request of any served embedding model can use).
MAX_EMBEDDING_TOKEN_IDS = MAX_PROMPT_BYTES // 4
# Token ids are int32 in every tokenizer served; larger numbers are a client's mistake.
_MAX_TOKEN_ID = 2**31 - 1
ENCODING_FORMATS = ("float", "base64")

EmbeddingInput = str | tuple[int, ...]
"""One input: its text, or its token ids."""


@dataclass(frozen=True)
class EmbeddingJob:
    """One validated embeddings request."""

    request_id: str
    model: str
    inputs: tuple[EmbeddingInput, ...]
    encoding_format: str = "float"
    dimensions: int | None = None
    created: int = 0
    user: str = ""


@dataclass(frozen=True)
class EmbeddingResult:
    """The engine's answer: one vector per input, in order, and the tokens it read."""

    vectors: Sequence[Sequence[float]]
    prompt_tokens: int


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _token_ids(field: str, values: Sequence[Any]) -> tuple[int, ...]:
    """``values`` as token ids (JSON numbers arrive as floats through protobuf's Value)."""
    if not values:
        raise InvalidArgumentError(f"{field}: a list of token ids must not be empty")
    ids = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidArgumentError(f"{field}: token ids must be integers")
        if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
            raise InvalidArgumentError(f"{field}: token ids must be integers")
        token = int(value)
        if not 0 <= token <= _MAX_TOKEN_ID:
            raise InvalidArgumentError(f"{field}: token ids must be in [0, {_MAX_TOKEN_ID}]")
        ids.append(token)
    return tuple(ids)


def _inputs(raw: Any) -> tuple[EmbeddingInput, ...]:
    """The request's inputs, each a string or a tuple of token ids."""
    if isinstance(raw, str):
        items: list[Any] = [raw]
    elif isinstance(raw, list):
        if not raw:
            raise InvalidArgumentError("input: must not be empty")
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in raw):
            items = [raw]  # one input as token ids
        else:
            items = raw
    elif raw is None:
        raise InvalidArgumentError("input: is required")
    else:
        raise InvalidArgumentError(
            "input: must be a string, a list of strings, a list of token ids or a list of"
            " lists of token ids"
        )
    if len(items) > MAX_EMBEDDING_INPUTS:
        raise InvalidArgumentError(
            f"input: at most {MAX_EMBEDDING_INPUTS} inputs are allowed, got {len(items)}"
        )
    inputs: list[EmbeddingInput] = []
    text_bytes = token_ids = 0
    for index, item in enumerate(items):
        field = f"input[{index}]" if isinstance(raw, list) and items is raw else "input"
        if isinstance(item, str):
            if not item:
                raise InvalidArgumentError(f"{field}: must not be an empty string")
            text_bytes += _utf8_len(item)
            if text_bytes > MAX_PROMPT_BYTES:
                raise InvalidArgumentError(
                    f"input: at most {MAX_PROMPT_BYTES} bytes of text are allowed together"
                )
            inputs.append(item)
        elif isinstance(item, list):
            if token_ids + len(item) > MAX_EMBEDDING_TOKEN_IDS:
                raise InvalidArgumentError(
                    f"input: at most {MAX_EMBEDDING_TOKEN_IDS} token ids are allowed together"
                )
            ids = _token_ids(field, item)
            token_ids += len(ids)
            inputs.append(ids)
        else:
            raise InvalidArgumentError(
                f"{field}: must be a string or a list of token ids; one request's inputs"
                " are all strings or all token-id lists"
            )
    if len({type(i) for i in inputs}) > 1:
        raise InvalidArgumentError("input: mixes strings and token-id lists")
    return tuple(inputs)


def embedding_job(
    model: str,
    raw_input: Any,
    *,
    encoding_format: str = "",
    dimensions: int | None = None,
    user: str = "",
    now: float | None = None,
) -> EmbeddingJob:
    """Validate an embeddings request; ``raw_input`` is the decoded JSON of ``input``."""
    if not model:
        raise InvalidArgumentError("model: is required")
    if _utf8_len(model) > MAX_ID_BYTES:
        raise InvalidArgumentError(f"model: at most {MAX_ID_BYTES} bytes, got {_utf8_len(model)}")
    encoding = encoding_format or "float"
    if encoding not in ENCODING_FORMATS:
        raise InvalidArgumentError(f"encoding_format: must be one of {', '.join(ENCODING_FORMATS)}")
    if dimensions is not None and dimensions < 1:
        raise InvalidArgumentError(f"dimensions: must be >= 1, got {dimensions}")
    if _utf8_len(user) > MAX_ID_BYTES:
        raise InvalidArgumentError(f"user: at most {MAX_ID_BYTES} bytes")
    return EmbeddingJob(
        request_id=f"embd-{uuid.uuid4().hex}",
        model=model,
        inputs=_inputs(raw_input),
        encoding_format=encoding,
        dimensions=dimensions,
        created=int(now if now is not None else time.time()),
        user=user,
    )


def truncate_and_normalize(vector: Sequence[float], dimensions: int) -> list[float]:
    """The first ``dimensions`` values of ``vector``, scaled to unit length again (a
    Matryoshka model's shorter embedding, as vLLM and sentence-transformers make it)."""
    head = [float(v) for v in vector[:dimensions]]
    norm = math.sqrt(math.fsum(v * v for v in head))
    if norm == 0.0:
        return head
    return [v / norm for v in head]


def encode_base64(vector: Sequence[float]) -> str:
    """OpenAI's base64 encoding: the little-endian float32 values, base64-encoded."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def decode_base64(text: str) -> list[float]:
    """:func:`encode_base64`'s inverse (ValueError on a malformed string)."""
    data = base64.b64decode(text, validate=True)
    if len(data) % 4:
        raise ValueError("a base64 embedding must hold whole float32 values")
    return list(struct.unpack(f"<{len(data) // 4}f", data))
