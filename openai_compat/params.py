"""OpenAI request semantics: validation and defaults, on plain Python values.

Domain only (no protobuf): the servicer converts the request at the edge and hands the
values here. Every rejection names the offending field, the way OpenAI's API does, and
quotes none of the client's input (a field may be megabytes long).

Sizes are checked here, before anything expensive: the prompt's (or all messages') text
at most :data:`runtime.limits.MAX_PROMPT_BYTES`, the model id :data:`MAX_ID_BYTES`, at most
:data:`MAX_MESSAGES` messages, each stop sequence :data:`MAX_STOP_BYTES`. An engine then
checks the text against its own context length before it tokenizes (worker/engine).
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from runtime.errors import InvalidArgumentError
from runtime.limits import MAX_ID_BYTES, MAX_MESSAGES, MAX_PROMPT_BYTES, MAX_STOP_BYTES

MAX_STOP_SEQUENCES = 4
DEFAULT_CHAT_MAX_TOKENS = 256
DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's documented default for /v1/completions
CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})


@dataclass(frozen=True)
class Sampling:
    """Validated sampling parameters."""

    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int | None
    stop: tuple[str, ...]
    ignore_eos: bool = False


@dataclass(frozen=True)
class Job:
    """One validated generation, ready for a worker."""

    request_id: str
    model: str
    sampling: Sampling
    created: int
    prompt: str | None = None
    messages: tuple[tuple[str, str], ...] | None = None
    include_usage: bool = False


@dataclass(frozen=True)
class CommonParams:
    """The parameters chat and completion requests share, as the client sent them
    (None where absent)."""

    model: str
    max_tokens: int | None
    temperature: float | None
    top_p: float | None
    top_k: int | None
    seed: int | None
    stop: Any
    n: int | None
    presence_penalty: float | None
    frequency_penalty: float | None
    include_usage: bool
    ignore_eos: bool = False


def _stop_sequences(stop: Any) -> tuple[str, ...]:
    if stop is None:
        return ()
    if isinstance(stop, str):
        stops: Sequence[Any] = [stop]
    elif isinstance(stop, list):
        stops = stop
    else:
        raise InvalidArgumentError("stop: must be a string or a list of strings")
    if len(stops) > MAX_STOP_SEQUENCES:
        raise InvalidArgumentError(f"stop: at most {MAX_STOP_SEQUENCES} sequences are allowed")
    if not all(isinstance(s, str) and s for s in stops):
        raise InvalidArgumentError("stop: every sequence must be a non-empty string")
    if any(_utf8_len(s) > MAX_STOP_BYTES for s in stops):
        raise InvalidArgumentError(f"stop: a sequence may be at most {MAX_STOP_BYTES} bytes")
    return tuple(stops)


def _utf8_len(text: str) -> int:
    """``len(text.encode())`` without the copy when the answer is clear from the length
    (a character is 1 to 4 bytes)."""
    if text.isascii():
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


def _check_text_size(field: str, size: int) -> None:
    if size > MAX_PROMPT_BYTES:
        raise InvalidArgumentError(
            f"{field}: at most {MAX_PROMPT_BYTES} bytes of text are allowed, got {size}"
        )


def _check_range(name: str, value: float, low: float, high: float, *, low_open: bool) -> None:
    too_low = value <= low if low_open else value < low
    if math.isnan(value) or too_low or value > high:
        bracket = "(" if low_open else "["
        raise InvalidArgumentError(f"{name}: must be in {bracket}{low:g}, {high:g}], got {value:g}")


def sampling_from(params: CommonParams, default_max_tokens: int) -> Sampling:
    """Validate the shared parameters and fill OpenAI's defaults."""
    if params.n is not None and params.n != 1:
        raise InvalidArgumentError("n: only 1 is supported")
    for name, penalty in (
        ("presence_penalty", params.presence_penalty),
        ("frequency_penalty", params.frequency_penalty),
    ):
        if penalty:
            raise InvalidArgumentError(f"{name}: only 0 is supported")
    max_tokens = default_max_tokens if params.max_tokens is None else params.max_tokens
    if max_tokens < 1:
        raise InvalidArgumentError(f"max_tokens: must be >= 1, got {max_tokens}")
    temperature = 1.0 if params.temperature is None else params.temperature
    _check_range("temperature", temperature, 0.0, 2.0, low_open=False)
    top_p = 1.0 if params.top_p is None else params.top_p
    _check_range("top_p", top_p, 0.0, 1.0, low_open=True)
    top_k = 0 if params.top_k is None else params.top_k
    if top_k < 0:
        raise InvalidArgumentError(f"top_k: must be >= 0, got {top_k}")
    return Sampling(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        seed=params.seed,
        stop=_stop_sequences(params.stop),
        ignore_eos=params.ignore_eos,
    )


def _check_model(model: str) -> None:
    if not model:
        raise InvalidArgumentError("model: is required")
    if _utf8_len(model) > MAX_ID_BYTES:
        raise InvalidArgumentError(f"model: at most {MAX_ID_BYTES} bytes, got {_utf8_len(model)}")


def _message_text(index: int, content: Any) -> str:
    """A message's text: a string, or the text parts of OpenAI's content-part array."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise InvalidArgumentError(
                    f"messages[{index}].content: only text content parts are supported"
                )
            text = part.get("text")
            if not isinstance(text, str):
                raise InvalidArgumentError(f"messages[{index}].content: a text part needs text")
            texts.append(text)
        return "".join(texts)
    raise InvalidArgumentError(f"messages[{index}].content: must be a string or a list of parts")


def chat_job(
    params: CommonParams, messages: Sequence[tuple[str, Any]], *, now: float | None = None
) -> Job:
    """Validate a chat completion request. ``messages`` are (role, content) pairs with
    content as decoded JSON (a string, a list of parts, or None)."""
    _check_model(params.model)
    if not messages:
        raise InvalidArgumentError("messages: at least one message is required")
    if len(messages) > MAX_MESSAGES:
        raise InvalidArgumentError(
            f"messages: at most {MAX_MESSAGES} messages are allowed, got {len(messages)}"
        )
    turns = []
    size = 0
    for index, (role, content) in enumerate(messages):
        if role not in CHAT_ROLES:
            raise InvalidArgumentError(
                f"messages[{index}].role: must be one of {', '.join(sorted(CHAT_ROLES))}"
            )
        text = _message_text(index, content)
        size += _utf8_len(text)
        _check_text_size("messages", size)
        # Chat templates know "system"; OpenAI's newer "developer" role means the same.
        turns.append(("system" if role == "developer" else role, text))
    return Job(
        request_id=f"chatcmpl-{uuid.uuid4().hex}",
        model=params.model,
        sampling=sampling_from(params, DEFAULT_CHAT_MAX_TOKENS),
        created=int(now if now is not None else time.time()),
        messages=tuple(turns),
        include_usage=params.include_usage,
    )


def completion_job(
    params: CommonParams, prompt: Any, *, echo: bool = False, now: float | None = None
) -> Job:
    """Validate a (legacy) completion request; ``prompt`` is decoded JSON."""
    _check_model(params.model)
    if echo:
        raise InvalidArgumentError("echo: only false is supported")
    if isinstance(prompt, list):
        if len(prompt) != 1 or not isinstance(prompt[0], str):
            raise InvalidArgumentError("prompt: only a single string prompt is supported")
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise InvalidArgumentError("prompt: must be a non-empty string")
    _check_text_size("prompt", _utf8_len(prompt))
    return Job(
        request_id=f"cmpl-{uuid.uuid4().hex}",
        model=params.model,
        sampling=sampling_from(params, DEFAULT_COMPLETION_MAX_TOKENS),
        created=int(now if now is not None else time.time()),
        prompt=prompt,
        include_usage=params.include_usage,
    )
