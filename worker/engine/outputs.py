"""Output assembly for both engines (after vLLM's output processor): a request's chunks
with their running counts, logprobs and finish reason, and the engine's counters.

An engine hands each step's text delta and tokens to the request's
:class:`RequestOutput`; it counts the completion, the engine's generated tokens and its
aborted requests (a finish of ABORT, or a stream closed before its final chunk), so
that every engine reports the same figures for the same stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from openai_compat.logprobs import TokenLogprob
from worker.engine.base import FinishReason, GenerationChunk

__all__ = ["OutputCounters", "RequestOutput", "finish_reason"]

# vLLM's names of why a sequence finished.
_FINISH = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH, "abort": FinishReason.ABORT}


def finish_reason(name: str | None, finished: bool) -> FinishReason | None:
    """The finish reason vLLM names ``name``; a finished output whose reason is unnamed
    (or named otherwise) stopped."""
    finish = _FINISH.get(name) if name else None
    return FinishReason.STOP if finish is None and finished else finish


@dataclass
class OutputCounters:
    """An engine's totals since it started (EngineStats' *_total figures)."""

    generated_tokens: int = 0
    aborted_requests: int = 0


class RequestOutput:
    """One request's chunks, from its first to its final one (the one with a finish
    reason)."""

    def __init__(self, counters: OutputCounters, prompt_tokens: int) -> None:
        self._counters = counters
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        # The final chunk was made (or the consumer is gone): closing now is no abort.
        self.finished = False

    def chunk(
        self,
        text: str,
        token_ids: Sequence[int] = (),
        finish: FinishReason | None = None,
        logprobs: Sequence[TokenLogprob] = (),
    ) -> GenerationChunk:
        """The chunk for ``token_ids`` (new, made here) whose text is ``text``."""
        self.completion_tokens += len(token_ids)
        self._counters.generated_tokens += len(token_ids)
        if finish is not None:
            self.finished = True
            if finish is FinishReason.ABORT:
                self._counters.aborted_requests += 1
        return GenerationChunk(
            text=text,
            token_ids=list(token_ids),
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            finish_reason=finish,
            logprobs=list(logprobs),
        )

    def abort(self, text: str = "") -> GenerationChunk:
        """The final chunk of an aborted request (``text``: what was held back)."""
        return self.chunk(text, finish=FinishReason.ABORT)

    def add_earlier(self, tokens: int) -> None:
        """Count ``tokens`` made before this engine took the request (a prefill
        elsewhere): in the completion, not as generated here."""
        self.completion_tokens += tokens

    def closed(self) -> bool:
        """The consumer went away (client gone, deadline, task cancelled): an abort unless
        the final chunk was made. True when it was one."""
        if self.finished:
            return False
        self.finished = True
        self._counters.aborted_requests += 1
        return True
