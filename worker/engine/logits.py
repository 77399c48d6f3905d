"""Logits processing and log probabilities for the reference engine, as vLLM does them.

Processing, in vLLM's order: ``logit_bias`` is added; ``repetition_penalty`` divides the
positive logits (multiplies the negative ones) of tokens seen in the prompt or the output;
``frequency_penalty`` times a token's count in the output and ``presence_penalty`` once
are subtracted; before ``min_tokens`` tokens the end-of-sequence tokens are masked.

Log probabilities are those of the model's own distribution (log-softmax of the raw
logits), before processing and sampling: vLLM's default (``raw_logprobs``). Runs in the
engine's threads (torch); nothing here touches the event loop.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Sequence

import torch

from openai_compat.logprobs import TokenLogprob
from runtime.errors import InvalidArgumentError
from worker.engine.base import SamplingParams

# Text of one token id (the engine's tokenizer, special tokens kept: they are tokens).
DecodeToken = Callable[[int], str]


def check_logit_bias(sampling: SamplingParams, vocab_size: int) -> None:
    """InvalidArgumentError naming logit_bias when a token id is outside the vocabulary."""
    for token, _ in sampling.logit_bias:
        if not 0 <= token < vocab_size:
            raise InvalidArgumentError(
                f"logit_bias: token id {token} is outside the vocabulary ({vocab_size} tokens)"
            )


def needs_processing(sampling: SamplingParams) -> bool:
    """Whether :func:`process` changes anything for ``sampling`` (the fast path skips it)."""
    return bool(
        sampling.logit_bias
        or sampling.presence_penalty
        or sampling.frequency_penalty
        or sampling.repetition_penalty != 1.0
        or sampling.min_tokens
    )


def process(
    logits: torch.Tensor,
    sampling: SamplingParams,
    prompt_ids: Sequence[int],
    generated: Sequence[int],
    eos_ids: Collection[int],
) -> torch.Tensor:
    """``logits`` (1-D, float32) processed for the next token after ``generated``."""
    logits = logits.clone()
    size = logits.numel()
    if sampling.logit_bias:
        ids = torch.tensor([t for t, _ in sampling.logit_bias if t < size], dtype=torch.long)
        bias = torch.tensor([b for t, b in sampling.logit_bias if t < size])
        logits.index_add_(0, ids, bias)
    if sampling.repetition_penalty != 1.0:
        seen_ids = sorted(t for t in {*prompt_ids, *generated} if t < size)
        seen = torch.tensor(seen_ids, dtype=torch.long)
        if seen.numel():
            values = logits[seen]
            penalty = sampling.repetition_penalty
            logits[seen] = torch.where(values > 0, values / penalty, values * penalty)
    if (sampling.frequency_penalty or sampling.presence_penalty) and generated:
        counts = Counter(t for t in generated if t < size)
        ids = torch.tensor(list(counts), dtype=torch.long)
        times = torch.tensor(list(counts.values()), dtype=logits.dtype)
        logits[ids] -= sampling.frequency_penalty * times + sampling.presence_penalty
    if len(generated) < sampling.min_tokens and not sampling.ignore_eos:
        eos = [t for t in eos_ids if t < size]
        if eos:
            logits[torch.tensor(eos, dtype=torch.long)] = float("-inf")
    return logits


def _alternatives(
    logprobs: torch.Tensor, count: int, decode: DecodeToken
) -> tuple[tuple[str, float], ...]:
    if count <= 0:
        return ()
    values, ids = torch.topk(logprobs, min(count, logprobs.numel()))
    return tuple(
        (decode(int(i)), float(v)) for v, i in zip(values.tolist(), ids.tolist(), strict=True)
    )


def token_logprob(
    raw_logits: torch.Tensor, token: int, count: int, decode: DecodeToken
) -> TokenLogprob:
    """The log probability of ``token`` under ``raw_logits`` (1-D) and the ``count`` most
    likely tokens there."""
    logprobs = torch.log_softmax(raw_logits.float(), dim=-1)
    return TokenLogprob(
        token=decode(token),
        logprob=float(logprobs[token]),
        top=_alternatives(logprobs, count, decode),
    )


def prompt_logprobs(
    raw_logits: torch.Tensor, prompt_ids: Sequence[int], count: int, decode: DecodeToken
) -> list[TokenLogprob]:
    """The prompt's tokens with their log probabilities, from the logits of every
    prompt position (2-D: position, vocabulary): the first token has none (nothing
    predicts it), token i its probability after tokens 0..i-1."""
    out = [TokenLogprob(token=decode(prompt_ids[0]), logprob=None)]
    logprobs = torch.log_softmax(raw_logits.float(), dim=-1)
    for position, token in enumerate(prompt_ids[1:]):
        row = logprobs[position]
        out.append(
            TokenLogprob(
                token=decode(token),
                logprob=float(row[token]),
                top=_alternatives(row, count, decode),
            )
        )
    return out
