"""A prompt too long for the context is refused before it is tokenized.

Tokenizing is the first expensive thing an engine does with a prompt, and it costs in
proportion to the text: a 15 MB prompt kept an engine thread busy for seconds, grew the
worker's memory by gigabytes, and was refused only afterwards by the token-count check.
No token is longer than the tokenizer's longest vocabulary entry, so a text of ``B`` bytes
is at least ``B / longest`` tokens: a text longer than ``(context - max_tokens) *
longest`` bytes cannot fit, whatever it says, and is refused without tokenizing. Texts
below that bound are tokenized and counted exactly as before. (Vocabulary entries are
measured in UTF-8 bytes of their written form, which is never shorter than the bytes they
stand for: byte-level BPE writes a byte as one 1- or 2-byte character, SentencePiece's
byte fallback as ``<0xNN>``.)

Both engines check a request the same way (:class:`PromptLimits`): its sampling values
and id, this byte bound, then, once tokenized, the exact token count. Long texts are
tokenized off the event loop; an engine may tokenize short ones on it (``inline_bytes``),
where they cost less than the hop to a thread (see INLINE_TOKENIZE_BYTES).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from runtime.errors import InvalidArgumentError
from worker.engine.base import GenerationRequest, SamplingParams

__all__ = [
    "ALWAYS_TOKENIZED_BYTES",
    "FALLBACK_TOKEN_BYTES",
    "INLINE_TOKENIZE_BYTES",
    "PromptLimits",
    "check_prompt_fits",
    "longest_token_bytes",
    "validate_sampling",
]

# When a tokenizer's vocabulary cannot be listed: generous (no real vocabulary has
# longer entries than a few dozen bytes, bar special tokens).
FALLBACK_TOKEN_BYTES = 256
# Texts this short are always tokenized (a millisecond or so) and judged by their exact
# token count, whose error says how many tokens they are.
ALWAYS_TOKENIZED_BYTES = 16 * 1024
# Texts up to this size take about half a millisecond to render and tokenize (chat
# template included: ~50 us + ~250 us per KiB with the default models' tokenizers), less
# than a thread hop costs a busy worker: at 16 streams the hop (the executor's thread
# waits for the GIL behind the event loop) added ~9 ms to the time to first token (vLLM on
# 2 CPU cores, 3 interleaved rounds: p50 45/43/48 ms through a thread, 34/38/33 inline).
INLINE_TOKENIZE_BYTES = 2 * 1024


def longest_token_bytes(tokenizer: Any) -> int:
    """The UTF-8 length of the tokenizer's longest vocabulary entry (added tokens
    included)."""
    try:
        vocab = tokenizer.get_vocab()
    except Exception:  # a tokenizer without a listable vocabulary: stay generous
        return FALLBACK_TOKEN_BYTES
    longest = max((len(str(token).encode("utf-8", "surrogatepass")) for token in vocab), default=0)
    return longest if longest > 0 else FALLBACK_TOKEN_BYTES


def _text_bytes(request: GenerationRequest) -> tuple[str, int]:
    if request.messages is not None:
        return "messages", sum(_utf8_len(m.content) for m in request.messages)
    return "prompt", _utf8_len(request.prompt or "")


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def check_prompt_fits(
    request: GenerationRequest, *, context_len: int, token_bytes: int, model_name: str
) -> int:
    """The request's text in bytes; InvalidArgumentError when it cannot fit
    ``context_len`` tokens together with its max_tokens, judged from its bytes alone (no
    tokenizer call)."""
    field, size = _text_bytes(request)
    room = max(context_len - request.sampling.max_tokens, 0)
    if size > max(room * token_bytes, ALWAYS_TOKENIZED_BYTES):
        raise InvalidArgumentError(
            f"{field} has {size} bytes of text, more than can fit the context length of"
            f" {model_name!r} ({context_len} tokens) with max_tokens"
            f" {request.sampling.max_tokens}; shorten the {field} or lower max_tokens"
        )
    return size


def _tokenizing_reads(request: GenerationRequest, text_bytes: int) -> int:
    """What tokenizing ``request`` goes through, in bytes: its text, the tools its chat
    template renders, and its token ids (4 bytes apiece: they are copied and checked).
    The byte bound above counts the text only; deciding where to tokenize counts it all,
    so that no input a client controls can hold the event loop."""
    ids = request.prompt_token_ids
    return text_bytes + len(request.tools_json) + 4 * (len(ids) if ids is not None else 0)


def validate_sampling(sampling: SamplingParams) -> None:
    """InvalidArgumentError for sampling values that no engine runs."""
    if sampling.max_tokens < 1:
        raise InvalidArgumentError(f"max_tokens must be >= 1, got {sampling.max_tokens}")
    if not math.isfinite(sampling.temperature) or sampling.temperature < 0:
        raise InvalidArgumentError(
            f"temperature must be a finite number >= 0, got {sampling.temperature}"
        )
    if not (0.0 < sampling.top_p <= 1.0):
        raise InvalidArgumentError(f"top_p must be in (0, 1], got {sampling.top_p}")
    if sampling.top_k < 0:
        raise InvalidArgumentError(f"top_k must be >= 0 (0 disables it), got {sampling.top_k}")
    if any(not s for s in sampling.stop):
        raise InvalidArgumentError("stop strings must not be empty")


@dataclass(frozen=True)
class PromptLimits:
    """What one model's requests are checked against: its context length and its
    tokenizer's longest vocabulary entry (the byte bound). Texts of at most
    ``inline_bytes`` are tokenized on the event loop (0: never)."""

    model_name: str
    context_len: int
    token_bytes: int
    inline_bytes: int = 0

    @classmethod
    def of(
        cls, tokenizer: Any, model_name: str, context_len: int, *, inline_bytes: int = 0
    ) -> PromptLimits:
        return cls(model_name, context_len, longest_token_bytes(tokenizer), inline_bytes)

    async def prompt_ids(
        self,
        request: GenerationRequest,
        tokenize: Callable[[GenerationRequest], list[int]],
        executor: Executor | None = None,
    ) -> list[int]:
        """``tokenize(request)`` on ``executor`` (None: the loop's default), or here when
        it reads at most ``inline_bytes`` (text, tools and token ids), for a request whose
        sampling values, id and bytes pass, and whose tokens then fit the context."""
        validate_sampling(request.sampling)
        if not request.request_id:
            raise InvalidArgumentError("request_id must not be empty")
        size = check_prompt_fits(
            request,
            context_len=self.context_len,
            token_bytes=self.token_bytes,
            model_name=self.model_name,
        )
        if self.inline_bytes > 0 and _tokenizing_reads(request, size) <= self.inline_bytes:
            ids = tokenize(request)
        else:
            ids = await asyncio.get_running_loop().run_in_executor(executor, tokenize, request)
        self.check_length(request, len(ids))
        return ids

    def check_length(self, request: GenerationRequest, prompt_len: int) -> None:
        """InvalidArgumentError when ``prompt_len`` tokens and max_tokens exceed the
        context."""
        field_name = "messages" if request.messages is not None else "prompt"
        max_tokens = request.sampling.max_tokens
        if prompt_len + max_tokens > self.context_len:
            raise InvalidArgumentError(
                f"{field_name} has {prompt_len} tokens and max_tokens is {max_tokens}: together"
                f" they exceed the context length of {self.model_name!r}"
                f" ({self.context_len} tokens); shorten the {field_name} or lower max_tokens"
            )
