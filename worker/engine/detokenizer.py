"""Detokenizing and stop handling for an engine that samples its own tokens (the
reference engine; vLLM detokenizes and stops inside its own engine).

Each step decodes everything generated so far (:func:`decode_generated`), not the new
token alone: that is what makes a character split across tokens come out right.
:class:`IncrementalText` turns those texts into the deltas a stream sends, which always
add up to the final text, and decides when the generation ends: an end-of-sequence
token, a stop string (dropped, with what follows it) or max_tokens. A delta holds back a
trailing partial UTF-8 character (decoded as U+FFFD until its last byte arrives) and any
tail that could start a stop string, since both may still change what is sent.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from worker.engine.base import FinishReason, SamplingParams

__all__ = ["IncrementalText", "decode_generated", "decode_prompt"]

_REPLACEMENT_CHAR = "\ufffd"


def decode_generated(tokenizer: Any, ids: Sequence[int]) -> str:
    """The text of generated ``ids`` (special tokens skipped: they are no answer text)."""
    text = tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    assert isinstance(text, str)  # one sequence in, one string out
    return text


def decode_prompt(tokenizer: Any, ids: Sequence[int]) -> str:
    """The text of a prompt given as ``ids`` (special tokens kept, as vLLM echoes)."""
    text = tokenizer.decode(ids, clean_up_tokenization_spaces=False)
    assert isinstance(text, str)
    return text


class IncrementalText:
    """One request's generated text, step by step: what to send and when to stop."""

    def __init__(self, sampling: SamplingParams, eos_ids: Collection[int]) -> None:
        self._sampling = sampling
        self._eos_ids: Collection[int] = () if sampling.ignore_eos else eos_ids
        self._max_stop = max((len(s) for s in sampling.stop), default=0)
        self.text = ""  # the decode of every token so far
        self._emitted = 0  # characters of it already sent
        self.tokens = 0

    def resume(self, text: str) -> None:
        """Start after one token made elsewhere (a prefill worker) whose text is ``text``;
        that worker sent exactly as much of it as :meth:`add` sends."""
        self.tokens = 1
        self.text = text
        self._emitted = self._boundary()

    def add(self, token: int, text: str) -> tuple[str, FinishReason | None]:
        """The delta to send for ``token``, after which everything decodes to ``text``,
        and the finish reason if the generation ends with it."""
        self.tokens += 1
        if token in self._eos_ids:
            # The eos token adds no text (it is normally a special token, skipped by the
            # decode; if a tokenizer does not mark it special, it is still no answer).
            return self.text[self._emitted :], FinishReason.STOP
        self.text = text
        if self.tokens >= self._sampling.min_tokens:
            stop_at = _find_stop(text, self._sampling.stop, self._emitted)
            if stop_at is not None:
                return text[self._emitted : stop_at], FinishReason.STOP
        if self.tokens >= self._sampling.max_tokens:
            return text[self._emitted :], FinishReason.LENGTH
        end = self._boundary()
        delta, self._emitted = text[self._emitted : end], end
        return delta, None

    def flush(self) -> str:
        """What was held back (an aborted request ends with it: deltas add up)."""
        rest, self._emitted = self.text[self._emitted :], len(self.text)
        return rest

    def _boundary(self) -> int:
        """How far the text may be sent (see the module's docstring)."""
        text, emitted, stops = self.text, self._emitted, self._sampling.stop
        end = len(text)
        while end > emitted and text[end - 1] == _REPLACEMENT_CHAR:
            end -= 1
        for k in range(min(self._max_stop - 1, end - emitted), 0, -1):
            tail = text[end - k : end]
            if any(s.startswith(tail) for s in stops):
                return end - k
        return end


def _find_stop(text: str, stops: Sequence[str], start: int) -> int | None:
    """Index of the earliest stop string in ``text`` at or after ``start``, or None.

    Text before ``start`` was already sent, and it can never hold the beginning of a
    match (a tail that could start a stop string is held back), so looking from there
    finds every match.
    """
    best: int | None = None
    for s in stops:
        i = text.find(s, start)
        if i != -1 and (best is None or i < best):
            best = i
    return best
