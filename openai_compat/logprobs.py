"""Token log probabilities, as engines report them and as OpenAI shapes them.

Domain only (no protobuf). An engine reports each output token as a :class:`TokenLogprob`
(its text, its log probability and the most likely tokens at its position); the chat API
lists them as ``choices[].logprobs.content[]`` entries ({token, logprob, bytes,
top_logprobs}), the completions API as four parallel lists ({tokens, token_logprobs,
top_logprobs, text_offset}). Both are built here, so a streamed answer and a whole one
carry the same values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TokenLogprob:
    """One token of an output: its text, its log probability (None for an echoed first
    prompt token, which nothing predicts) and the most likely tokens at its position,
    most likely first, as (text, logprob) pairs."""

    token: str
    logprob: float | None
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class ChatTokenEntry:
    """One entry of a chat choice's ``logprobs.content``."""

    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[tuple[str, float, list[int]]]


@dataclass
class CompletionLogprobs:
    """A completion choice's ``logprobs`` object: four lists, one entry per token.
    ``token_logprobs`` and ``top_logprobs`` hold None for an echoed first token."""

    tokens: list[str] = field(default_factory=list)
    token_logprobs: list[float | None] = field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = field(default_factory=list)
    text_offset: list[int] = field(default_factory=list)


def token_bytes(token: str) -> list[int]:
    """The UTF-8 bytes of a token's text, as OpenAI lists them."""
    return list(token.encode("utf-8", "replace"))


def chat_entries(logprobs: Sequence[TokenLogprob]) -> list[ChatTokenEntry]:
    """``logprobs`` as chat ``logprobs.content`` entries (chat never echoes, so every
    token has a log probability)."""
    return [
        ChatTokenEntry(
            token=lp.token,
            logprob=lp.logprob if lp.logprob is not None else 0.0,
            bytes=token_bytes(lp.token),
            top_logprobs=[(text, value, token_bytes(text)) for text, value in lp.top],
        )
        for lp in logprobs
    ]


def completion_logprobs(logprobs: Sequence[TokenLogprob], text_offset: int) -> CompletionLogprobs:
    """``logprobs`` in the completions shape; the first token starts at ``text_offset``
    characters into the choice's text (what earlier chunks of a stream carried).
    ``top_logprobs`` always holds the chosen token too, as OpenAI's does ("up to
    logprobs + 1 elements")."""
    out = CompletionLogprobs()
    offset = text_offset
    for lp in logprobs:
        out.tokens.append(lp.token)
        out.token_logprobs.append(lp.logprob)
        if lp.logprob is None:
            out.top_logprobs.append(None)
        else:
            top = dict(lp.top)
            top.setdefault(lp.token, lp.logprob)
            out.top_logprobs.append(top)
        out.text_offset.append(offset)
        offset += len(lp.token)
    return out


def text_length(logprobs: Sequence[TokenLogprob]) -> int:
    """How many characters ``logprobs``' tokens span (the next chunk's first offset)."""
    return sum(len(lp.token) for lp in logprobs)
