"""Size limits of OpenAI requests (openai_compat.params): checked before anything
tokenizes, naming the field, quoting none of the input."""

from __future__ import annotations

import dataclasses

import pytest

from openai_compat.params import CommonParams, chat_request, completion_request
from runtime.errors import InvalidArgumentError
from runtime.limits import MAX_ID_BYTES, MAX_MESSAGES, MAX_PROMPT_BYTES, MAX_STOP_BYTES

BASE = CommonParams(
    model="m",
    max_tokens=None,
    temperature=None,
    top_p=None,
    top_k=None,
    seed=None,
    stop=None,
    n=None,
    presence_penalty=None,
    frequency_penalty=None,
    include_usage=False,
)


def _rejected(call: object, *args: object, **kwargs: object) -> str:
    with pytest.raises(InvalidArgumentError) as err:
        call(*args, **kwargs)  # type: ignore[operator]
    message = err.value.message
    assert len(message) < 200, "an error must not echo the input"
    return message


def test_model_id_length() -> None:
    chat_request(dataclasses.replace(BASE, model="m" * MAX_ID_BYTES), [("user", "hi")])
    message = _rejected(
        chat_request, dataclasses.replace(BASE, model="m" * 100_000), [("user", "x")]
    )
    assert message.startswith("model: at most 256 bytes")
    # Bytes, not characters.
    assert _rejected(
        completion_request, dataclasses.replace(BASE, model="é" * 200), "hi"
    ).startswith("model:")


def test_prompt_bytes() -> None:
    completion_request(BASE, "a" * MAX_PROMPT_BYTES)
    assert _rejected(completion_request, BASE, "a" * (MAX_PROMPT_BYTES + 1)).startswith("prompt:")
    # Multi-byte characters count as their UTF-8 bytes.
    assert _rejected(completion_request, BASE, "€" * (MAX_PROMPT_BYTES // 3 + 1)).startswith(
        "prompt:"
    )
    assert _rejected(completion_request, BASE, ["a" * (MAX_PROMPT_BYTES + 1)]).startswith("prompt:")


def test_messages_bytes_together() -> None:
    half = "a" * (MAX_PROMPT_BYTES // 2 + 1)
    message = _rejected(chat_request, BASE, [("user", half), ("assistant", half)])
    assert message.startswith("messages: at most")
    parts = [{"type": "text", "text": half}, {"type": "text", "text": half}]
    assert _rejected(chat_request, BASE, [("user", parts)]).startswith("messages:")


def test_message_count() -> None:
    chat_request(BASE, [("user", "x")] * MAX_MESSAGES)
    assert _rejected(chat_request, BASE, [("user", "x")] * (MAX_MESSAGES + 1)).startswith(
        "messages: at most"
    )


def test_stop_sequence_length() -> None:
    chat_request(dataclasses.replace(BASE, stop=["s" * MAX_STOP_BYTES]), [("user", "x")])
    message = _rejected(
        chat_request, dataclasses.replace(BASE, stop=["s" * 1_000_000]), [("user", "x")]
    )
    assert message.startswith("stop:")
