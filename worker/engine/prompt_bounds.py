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
"""

from __future__ import annotations

from typing import Any

from runtime.errors import InvalidArgumentError
from worker.engine.base import GenerationRequest

__all__ = [
    "ALWAYS_TOKENIZED_BYTES",
    "FALLBACK_TOKEN_BYTES",
    "check_prompt_fits",
    "longest_token_bytes",
]

# When a tokenizer's vocabulary cannot be listed: generous (no real vocabulary has
# longer entries than a few dozen bytes, bar special tokens).
FALLBACK_TOKEN_BYTES = 256
# Texts this short are always tokenized (a millisecond or so) and judged by their exact
# token count, whose error says how many tokens they are.
ALWAYS_TOKENIZED_BYTES = 16 * 1024


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
) -> None:
    """InvalidArgumentError when the request's text cannot fit ``context_len`` tokens
    together with its max_tokens, judged from its bytes alone (no tokenizer call)."""
    field, size = _text_bytes(request)
    room = max(context_len - request.sampling.max_tokens, 0)
    if size > max(room * token_bytes, ALWAYS_TOKENIZED_BYTES):
        raise InvalidArgumentError(
            f"{field} has {size} bytes of text, more than can fit the context length of"
            f" {model_name!r} ({context_len} tokens) with max_tokens"
            f" {request.sampling.max_tokens}; shorten the {field} or lower max_tokens"
        )
