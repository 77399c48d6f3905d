"""One forward step of the reference engine, in its thread pool: the model's forward
pass over the request's KV cache, logits processing, structured-output masking,
sampling, log probabilities and the decode of the generation so far.

Runs off the event loop (torch releases the GIL in its kernels); nothing here awaits.
"""

from __future__ import annotations

import secrets
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from openai_compat.logprobs import TokenLogprob
from worker.engine.base import SamplingParams
from worker.engine.detokenizer import decode_generated
from worker.engine.grammar import GuideMatcher
from worker.engine.logits import needs_processing, process, prompt_logprobs, token_logprob

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["StepInput", "StepResult", "forward_sample_decode", "make_generator", "sample"]


@dataclass(frozen=True)
class StepInput:
    """One request's next step: its input (the whole prompt on the first step, then the
    last token), its KV cache (None before the first step) and what the sampling needs:
    the prompt and the tokens so far (penalties, echoed logprobs), the end-of-sequence
    ids (min_tokens), the request's RNG and its structured-output guide (None: none)."""

    input_ids: list[int]
    past: Any  # transformers Cache; opaque here
    sampling: SamplingParams
    generator: torch.Generator | None
    generated: list[int]
    prompt_ids: list[int]
    eos_ids: Collection[int]
    guide: GuideMatcher | None = None

    @property
    def first(self) -> bool:
        return self.past is None


@dataclass(frozen=True)
class StepResult:
    """What one step produced, already detokenised."""

    token: int
    past: Any  # transformers Cache; opaque here
    text: str  # decode of all generated tokens so far, this one included
    logprobs: list[TokenLogprob]  # asked for: this token's (after the prompt's, if echoed)


def forward_sample_decode(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    device: torch.device,
    vocab_limit: int,
    step: StepInput,
) -> StepResult:
    """Run one step: feed the input through the model with its KV cache, pick the next
    token among the first ``vocab_limit`` ids, and decode the whole generation.

    The logits are processed (worker.engine.logits) before sampling; log probabilities,
    when asked for, are the raw logits' (the prompt's too on an echoing first step:
    every position's logits).
    """

    def decode_one(token_id: int) -> str:
        return str(tokenizer.decode([token_id], clean_up_tokenization_spaces=False))

    sampling, guide = step.sampling, step.guide
    count = sampling.logprobs
    with_prompt = count is not None and sampling.echo and step.first
    logprobs: list[TokenLogprob] = []
    # inference_mode is thread-local, so it is entered here, in the worker thread.
    with torch.inference_mode():
        inputs = torch.tensor([step.input_ids], dtype=torch.long, device=device)
        out = model(
            input_ids=inputs,
            past_key_values=step.past,
            use_cache=True,
            logits_to_keep=0 if with_prompt else 1,
        )
        raw = out.logits[0, -1, :vocab_limit].float()
        logits = raw
        if needs_processing(sampling):
            logits = process(raw, sampling, step.prompt_ids, step.generated, step.eos_ids)
        if guide is not None:
            logits = guide.mask(logits)
        token = sample(logits, sampling, step.generator)
        if guide is not None:
            guide.accept(token)
        if count is not None:
            if with_prompt:
                rows = out.logits[0, :-1, :vocab_limit]
                logprobs = prompt_logprobs(rows, step.input_ids, count, decode_one)
            logprobs.append(token_logprob(raw, token, count, decode_one))
    text = decode_generated(tokenizer, [*step.generated, token])
    return StepResult(token, out.past_key_values, text, logprobs)


def sample(
    logits: torch.Tensor, sampling: SamplingParams, generator: torch.Generator | None
) -> int:
    """Pick a token from 1-D ``logits``: greedy, or temperature + top-k + top-p sampling.

    Whatever the values (a temperature of 1e-45 or 1e30, top_p of 1e-9, NaN or infinite
    logits), this returns a token id in range and never raises: the logits are made
    float32 and sanitised (:func:`sanitize_logits`), shifted so that their maximum is 0
    before dividing by the temperature (so the division cannot overflow to inf and the
    softmax always has a term of 1), and a temperature below
    :data:`~worker.engine.base.SAMPLING_EPS` is greedy.
    """
    logits = sanitize_logits(logits)
    if sampling.greedy:
        return int(torch.argmax(logits).item())
    top = logits.max()
    if not bool(torch.isfinite(top)):
        # Nothing is finite (every logit was NaN or -inf): no distribution to sample.
        return int(torch.argmax(logits).item())
    logits = (logits - top) / sampling.temperature
    if 0 < sampling.top_k < logits.numel():
        kth = torch.topk(logits, sampling.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token once the ones before it already cover top_p; the most likely
        # token is always kept.
        drop = (torch.cumsum(probs, dim=-1) - probs) > sampling.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(0, order, sorted_logits)
    probs = torch.softmax(logits, dim=-1)
    if not bool(torch.isfinite(probs).all()):  # cannot happen after the shift; kept as a guard
        return int(torch.argmax(logits).item())
    return int(torch.multinomial(probs, num_samples=1, generator=generator).item())


def sanitize_logits(logits: torch.Tensor) -> torch.Tensor:
    """``logits`` as float32 with no NaN and no +inf: NaN becomes -inf (never picked), and
    when some logits are +inf only those remain, equally likely (they all say "certain").
    One reduction when everything is finite, the usual case."""
    logits = logits.float()
    if bool(torch.isfinite(logits).all()):
        return logits
    positive = logits == float("inf")
    if bool(positive.any()):
        return torch.zeros_like(logits).masked_fill(~positive, float("-inf"))
    return torch.nan_to_num(logits, nan=float("-inf"))


def make_generator(sampling: SamplingParams) -> torch.Generator | None:
    """A private RNG per request: concurrent requests never share (or disturb) a random
    stream, so a seeded request samples the same tokens whatever else is running."""
    if sampling.greedy:
        return None
    seed = sampling.seed if sampling.seed is not None else secrets.randbits(63)
    return torch.Generator(device="cpu").manual_seed(seed)
