"""Hypothesis strategies for the fuzz suite: OpenAI-ish JSON bodies, arbitrary JSON and
bytes, paths, headers, and protobuf messages built from any message descriptor."""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format, message_factory, struct_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

from models.tinymodel import DEFAULT_MODEL_NAME

MODEL = f"helios/{DEFAULT_MODEL_NAME}"

INTERESTING_NUMBERS: list[Any] = [
    0,
    -1,
    1,
    2,
    2**31,
    -(2**31) - 1,
    2**63,
    2**64,
    1e-45,
    5e-324,
    -0.0,
    2.0000001,
    1e308,
    1e309,
    "1",
    "NaN",
    "Infinity",
    True,
    None,
]
INTERESTING_STRINGS: list[str] = [
    "",
    " ",
    "a" * 300,
    "../../etc/passwd",
    "/etc/passwd",
    "org/name@latest",
    "helios/../x",
    "\x00",
    "\ud800",
    "é" * 100,
    "127.0.0.1:1",
    "%ff",
]

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(INTERESTING_NUMBERS)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
numbers = st.sampled_from(INTERESTING_NUMBERS) | st.floats(allow_nan=False) | st.integers()
texts = st.text(max_size=40) | st.sampled_from(INTERESTING_STRINGS)


def _text_part() -> st.SearchStrategy[Any]:
    return st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "image_url", ""]) | texts},
        optional={"text": texts | json_scalars},
    )


chat_message = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "system", "assistant", "developer", "tool", "bogus"])
        | json_scalars,
        "content": texts | st.lists(_text_part(), max_size=3) | json_values,
    },
    optional={"name": texts},
)

# Small max_tokens always: a body that passes validation costs at most a few tokens.
small_max_tokens = st.integers(min_value=-2, max_value=3) | st.sampled_from(
    [0, -1, 2**31, 10**9, 1e-45, "2", None, 2.5]
)


def _openai_common() -> dict[str, st.SearchStrategy[Any]]:
    return {
        "temperature": numbers,
        "top_p": numbers,
        "top_k": numbers,
        "seed": numbers,
        "stop": texts | st.lists(texts, max_size=6) | json_values,
        "n": numbers,
        "presence_penalty": numbers,
        "frequency_penalty": numbers,
        "stream": st.booleans() | st.sampled_from(["true", "yes", 1, None]),
        "stream_options": st.fixed_dictionaries({}, optional={"include_usage": json_scalars})
        | json_values,
        "ignore_eos": st.booleans() | json_scalars,
        "user": texts,
        "unknown_field": json_values,
    }


def chat_bodies() -> st.SearchStrategy[Any]:
    return st.fixed_dictionaries(
        {
            "model": st.sampled_from([MODEL, MODEL, "", "nope/none", "m" * 300]) | texts,
            "messages": st.lists(chat_message, max_size=3) | json_values,
            "max_tokens": small_max_tokens,
        },
        optional={**_openai_common(), "max_completion_tokens": small_max_tokens},
    )


def completion_bodies() -> st.SearchStrategy[Any]:
    return st.fixed_dictionaries(
        {
            "model": st.sampled_from([MODEL, MODEL, "", "nope/none", "m" * 300]) | texts,
            "prompt": texts | st.lists(texts, max_size=2) | json_values,
            "max_tokens": small_max_tokens,
        },
        optional={**_openai_common(), "echo": json_scalars},
    )


def encoded(bodies: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """JSON text of ``bodies`` (NaN and Infinity included: invalid JSON the edge must
    refuse), sometimes cut or with a stray byte, or other JSON, or raw bytes."""

    def dump(value: Any) -> bytes:
        return json.dumps(value).encode("utf-8", "surrogatepass")

    structured = bodies.map(dump)
    mangled = st.tuples(
        structured, st.integers(min_value=0, max_value=200), st.binary(max_size=3)
    ).map(lambda t: t[0][: t[1]] + t[2] + t[0][t[1] :])
    nested = st.integers(min_value=20, max_value=200).map(
        lambda depth: (
            b'{"model":"'
            + MODEL.encode()
            + b'","messages":[{"role":"user","content":'
            + b"[" * depth
            + b"]" * depth
            + b'}],"max_tokens":1}'
        )
    )
    return st.one_of(
        structured,
        structured,
        structured,
        mangled,
        nested,
        json_values.map(dump),
        st.binary(max_size=64),
    )


# --- paths and headers ---------------------------------------------------------------
segment = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="/?#"), min_size=1, max_size=12
).map(
    lambda s: "".join(c if c.isascii() and c.isalnum() else f"%{ord(c) & 0xFF:02x}" for c in s)
) | st.sampled_from(["%ff%fe", "%c3", "%00", "..", "%2e%2e", "a" * 3000, MODEL, "helios%2Fx", "%"])
REST_PATHS = [
    "/v1/chat/completions",
    "/v1/chat/completions:stream",
    "/v1/completions",
    "/v1/completions:stream",
    "/v1/models",
    "/v1/health",
    "/v1/estimate/memory",
    "/v1/estimate/batch",
    "/v1/estimate/optimize",
    "/v1/estimate/gpu-recommendations",
    "/v1/estimate/model/",
    "/v1/estimate/gpu-compatibility/",
    "/v1/admin/preload",
    "/v1/admin/scale",
    "/v1/admin/memory-stats",
    "/v1/admin/evict/",
    "/v1/metrics",
    "/v1/",
    "/",
    "/helios.v1.WorkerService/LoadModel",
    "/helios.v1.StorageService/Stat",
    "/helios.v1.RegistryService/ImportModel",
]
paths = st.tuples(
    st.sampled_from(REST_PATHS),
    st.lists(segment, max_size=3),
    st.sampled_from(["", "?a=1", "?%ff=%fe", "?api-version=1"]),
).map(lambda t: t[0] + "/".join(t[1]) + t[2])
methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"])
header_names = st.sampled_from(
    [
        "content-type",
        "grpc-timeout",
        "x-helios-model",
        "x-helios-edge",
        "x-helios-client",
        "authorization",
        "te",
        "x-envoy-upstream-rq-timeout-ms",
        "x-forwarded-for",
        "x-junk",
    ]
)
header_values = st.sampled_from(
    [
        "application/json",
        "application/grpc",
        "text/plain",
        "1n",
        "99999999H",
        "0m",
        "rest",
        "Bearer nope",
        "trailers",
        MODEL,
        "a" * 4000,
        "a" * 12000,
        "",
    ]
) | st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40).map(
    str.strip  # a value with surrounding spaces is refused by the HTTP client itself
)
headers = st.dictionaries(
    header_names,
    header_values | st.just(b"caf\xe9 \xff\xfe"),  # not UTF-8: reaches the servers as metadata
    max_size=3,
)


# --- protobuf messages from descriptors ----------------------------------------------
_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_JSON_TYPES = {"google.protobuf.Value", "google.protobuf.Struct", "google.protobuf.ListValue"}


def _scalar(field: FieldDescriptor, strings: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind in _INT_RANGES:
        low, high = _INT_RANGES[kind]
        return st.integers(min_value=low, max_value=high) | st.sampled_from(
            [low, high, 0, -1 if low else 1, 1]
        )
    if kind == FieldDescriptor.TYPE_DOUBLE:
        return st.floats()
    if kind == FieldDescriptor.TYPE_FLOAT:
        return st.floats(width=32)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_STRING:
        return strings
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=30)
    if kind == FieldDescriptor.TYPE_ENUM:
        return st.sampled_from([v.number for v in field.enum_type.values]) | st.integers(0, 50)
    raise AssertionError(f"unhandled field type {kind}")


@st.composite
def proto_messages(
    draw: st.DrawFn, descriptor: Descriptor, *, allow_model: bool = True, depth: int = 0
) -> Message:
    """A message of ``descriptor``'s type with each field set or not, values from the
    whole range of its type (and interesting strings; the served model's id only when
    ``allow_model``), messages nested 3 deep at most."""
    strings = st.text(max_size=30) | st.sampled_from(
        [*INTERESTING_STRINGS, *([MODEL, MODEL] if allow_model else [])]
    )
    message = message_factory.GetMessageClass(descriptor)()
    for field in descriptor.fields:
        if not draw(st.booleans()):
            continue
        repeated = field.is_repeated
        count = draw(st.integers(min_value=0, max_value=2)) if repeated else 1
        sub = field.message_type
        for _ in range(count):
            if sub is not None:
                if sub.GetOptions().map_entry:
                    break
                if sub.full_name in _JSON_TYPES:
                    value = draw(
                        json_values if sub.full_name == "google.protobuf.Value" else st.just({})
                    )
                    target = (
                        struct_pb2.Value() if sub.full_name == "google.protobuf.Value" else None
                    )
                    if target is None:
                        break
                    try:
                        json_format.ParseDict(value, target)
                    except (json_format.ParseError, ValueError):
                        break
                    made: Message = target
                elif depth >= 3:
                    break
                else:
                    made = draw(proto_messages(sub, allow_model=allow_model, depth=depth + 1))
                if repeated:
                    getattr(message, field.name).add().CopyFrom(made)
                else:
                    getattr(message, field.name).CopyFrom(made)
            else:
                value = draw(_scalar(field, strings))
                try:
                    if repeated:
                        getattr(message, field.name).append(value)
                    else:
                        setattr(message, field.name, value)
                except ValueError:  # a lone surrogate is no UTF-8 string: not sendable
                    break
    return message
