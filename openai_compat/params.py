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

import dataclasses
import math
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from openai_compat.prompts import Prompt, completion_prompts
from openai_compat.structured import Guide
from openai_compat.tools import ToolPlan, TurnTools
from runtime.errors import InvalidArgumentError
from runtime.limits import MAX_ID_BYTES, MAX_MESSAGES, MAX_PROMPT_BYTES, MAX_STOP_BYTES

MAX_STOP_SEQUENCES = 4
DEFAULT_CHAT_MAX_TOKENS = 256
DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's documented default for /v1/completions
CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
# Choices of one request: n per prompt, and all prompts' together.
MAX_N = 16
MAX_CHOICES = 64
# Alternatives per token position (vLLM's default max_logprobs).
MAX_LOGPROBS = 20
MAX_LOGIT_BIAS_ENTRIES = 300
MAX_LOGIT_BIAS = 100.0
MAX_REPETITION_PENALTY = 10.0


# A temperature below this is greedy, in every engine (vLLM's _SAMPLING_EPS): dividing
# logits by a smaller one (1e-45 is a valid float32) overflows and the softmax is NaN.
SAMPLING_EPS = 1e-5


@dataclass(frozen=True)
class Sampling:
    """How to pick tokens: a request's validated sampling parameters, and what the
    worker's engines sample with (worker.engine.base.SamplingParams is this class).

    ``top_k == 0`` and ``top_p == 1.0`` disable those filters; ``temperature == 0`` (or
    below :data:`SAMPLING_EPS`) means greedy. ``seed`` makes sampling reproducible.
    ``ignore_eos`` keeps generating past end-of-sequence tokens (benchmarks, tests).

    Logits processing, in vLLM's order and meaning: ``logit_bias`` (token id, bias) pairs
    are added; ``repetition_penalty`` divides positive (multiplies negative) logits of
    tokens in the prompt or the output; ``frequency_penalty`` (times the count) and
    ``presence_penalty`` (once) are subtracted for tokens of the output; before
    ``min_tokens`` tokens, end-of-sequence tokens are masked and stop strings do not end
    the generation. ``logprobs``: report each token's log probability (of the model's own
    distribution, before any processing, as vLLM's default) and this many most likely
    alternatives (None: none). ``echo``: the first chunk starts with the prompt's text
    (and, with logprobs, the prompt tokens' log probabilities; completions)."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    min_tokens: int = 0
    logprobs: int | None = None
    echo: bool = False
    # Structured outputs: the constraint the engine enforces while sampling (None: none).
    guide: Guide | None = None

    @property
    def greedy(self) -> bool:
        """Whether the most likely token is always picked (temperature below
        :data:`SAMPLING_EPS`)."""
        return self.temperature < SAMPLING_EPS

    def by_name(self) -> dict[str, Any]:
        """Every parameter by its name: the wire's helios.v1.SamplingParams takes the same
        names (worker_api.wire.job_to_pb)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass(frozen=True)
class Job:
    """One validated generation (one choice), ready for a worker. Exactly one of
    ``prompt``, ``prompt_token_ids`` and ``messages`` is set. ``index`` is the choice's
    position in the answer; ``counts_prompt`` is true for the first choice of each prompt
    (usage counts a prompt's tokens once, however many choices it has)."""

    request_id: str
    model: str
    sampling: Sampling
    created: int
    prompt: str | None = None
    messages: tuple[tuple[str, str], ...] | None = None
    include_usage: bool = False
    prompt_token_ids: tuple[int, ...] | None = None
    index: int = 0
    counts_prompt: bool = True
    # Tool calling (chat): the tools and tool choice (None: no tools in play), and each
    # message's tool fields (empty when no message has any).
    tools: ToolPlan | None = None
    turn_tools: tuple[TurnTools, ...] = ()


@dataclass(frozen=True)
class Request:
    """A validated chat or completions request: its id (the answer's), and one job per
    choice, in index order."""

    request_id: str
    model: str
    created: int
    include_usage: bool
    jobs: tuple[Job, ...]

    @property
    def logprobs(self) -> bool:
        """Whether the answer carries log probabilities."""
        return self.jobs[0].sampling.logprobs is not None


@dataclass(frozen=True)
class CommonParams:
    """The parameters chat and completion requests share, as the client sent them
    (None where absent). ``logprobs``: the alternatives per token asked for (chat's
    top_logprobs once logprobs is true, completions' logprobs), None for none."""

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
    repetition_penalty: float | None = None
    logit_bias: Mapping[str, float] = field(default_factory=dict)
    min_tokens: int | None = None
    logprobs: int | None = None


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


def _logit_bias(bias: Mapping[str, float]) -> tuple[tuple[int, float], ...]:
    """OpenAI's {"token id": bias} as (id, bias) pairs; whether each id is in the
    model's vocabulary is the engine's check."""
    if len(bias) > MAX_LOGIT_BIAS_ENTRIES:
        raise InvalidArgumentError(
            f"logit_bias: at most {MAX_LOGIT_BIAS_ENTRIES} entries, got {len(bias)}"
        )
    pairs = []
    for key, value in bias.items():
        if not (key.isascii() and key.isdigit() and len(key) <= 10 and int(key) < 2**31):
            raise InvalidArgumentError("logit_bias: keys must be token ids (non-negative integers)")
        _check_range("logit_bias", value, -MAX_LOGIT_BIAS, MAX_LOGIT_BIAS, low_open=False)
        pairs.append((int(key), float(value)))
    return tuple(sorted(pairs))


def _penalties(params: CommonParams) -> tuple[float, float, float]:
    """presence, frequency and repetition penalties, validated (defaults: 0, 0, 1)."""
    presence = params.presence_penalty or 0.0
    frequency = params.frequency_penalty or 0.0
    _check_range("presence_penalty", presence, -2.0, 2.0, low_open=False)
    _check_range("frequency_penalty", frequency, -2.0, 2.0, low_open=False)
    repetition = 1.0 if params.repetition_penalty is None else params.repetition_penalty
    _check_range("repetition_penalty", repetition, 0.0, MAX_REPETITION_PENALTY, low_open=True)
    return presence, frequency, repetition


def choices_per_prompt(n: int | None, prompts: int = 1) -> int:
    """The validated n (1 when absent), with the choices of all prompts capped."""
    count = 1 if n is None else n
    if not 1 <= count <= MAX_N:
        raise InvalidArgumentError(f"n: must be in [1, {MAX_N}], got {count}")
    if count * prompts > MAX_CHOICES:
        raise InvalidArgumentError(
            f"n: {count} choices for each of {prompts} prompts is more than {MAX_CHOICES}"
        )
    return count


def sampling_from(params: CommonParams, default_max_tokens: int) -> Sampling:
    """Validate the shared parameters and fill OpenAI's defaults."""
    presence, frequency, repetition = _penalties(params)
    if params.logprobs is not None and not 0 <= params.logprobs <= MAX_LOGPROBS:
        raise InvalidArgumentError(
            f"logprobs: at most {MAX_LOGPROBS} alternatives per token, got {params.logprobs}"
        )
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
    min_tokens = params.min_tokens or 0
    if not 0 <= min_tokens <= max_tokens:
        raise InvalidArgumentError(f"min_tokens: must be in [0, max_tokens], got {min_tokens}")
    return Sampling(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        seed=params.seed,
        stop=_stop_sequences(params.stop),
        ignore_eos=params.ignore_eos,
        presence_penalty=presence,
        frequency_penalty=frequency,
        repetition_penalty=repetition,
        logit_bias=_logit_bias(params.logit_bias),
        min_tokens=min_tokens,
        logprobs=params.logprobs,
    )


def _choice(job: Job, index: int, choice: int, n: int, request_id: str) -> Job:
    """``job`` as choice ``index`` (its ``choice``-th of n for its prompt): its own
    request id for the engine, and seed + choice so that the choices differ but stay
    reproducible (vLLM's parallel sampling seeds its children the same way)."""
    seed = job.sampling.seed
    return dataclasses.replace(
        job,
        request_id=request_id if index == 0 and n == 1 else f"{request_id}-{index}",
        sampling=dataclasses.replace(job.sampling, seed=None if seed is None else seed + choice),
        index=index,
        counts_prompt=choice == 0,
    )


def _request(request_id: str, bases: Sequence[Job], n: int) -> Request:
    """The request whose choices are ``n`` of each of ``bases`` (one per prompt)."""
    first = bases[0]
    jobs = tuple(
        _choice(base, p * n + c, c, n * len(bases), request_id)
        for p, base in enumerate(bases)
        for c in range(n)
    )
    return Request(request_id, first.model, first.created, first.include_usage, jobs)


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


def chat_request(
    params: CommonParams, messages: Sequence[tuple[str, Any]], *, now: float | None = None
) -> Request:
    """Validate a chat completion request. ``messages`` are (role, content) pairs with
    content as decoded JSON (a string, a list of parts, or None)."""
    _check_model(params.model)
    n = choices_per_prompt(params.n)
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
    job = Job(
        request_id="",
        model=params.model,
        sampling=sampling_from(params, DEFAULT_CHAT_MAX_TOKENS),
        created=int(now if now is not None else time.time()),
        messages=tuple(turns),
        include_usage=params.include_usage,
    )
    return _request(f"chatcmpl-{uuid.uuid4().hex}", [job], n)


def completion_request(
    params: CommonParams,
    prompt: Any,
    *,
    echo: bool = False,
    best_of: int | None = None,
    now: float | None = None,
) -> Request:
    """Validate a (legacy) completion request; ``prompt`` is decoded JSON."""
    _check_model(params.model)
    prompts: tuple[Prompt, ...] = completion_prompts(prompt)
    n = choices_per_prompt(params.n, len(prompts))
    if best_of is not None and best_of != n:
        raise InvalidArgumentError(
            f"best_of: must equal n ({n}): no engine here generates extra sequences to"
            f" rank, got {best_of}"
        )
    sampling = dataclasses.replace(sampling_from(params, DEFAULT_COMPLETION_MAX_TOKENS), echo=echo)
    created = int(now if now is not None else time.time())
    bases = [
        Job(
            request_id="",
            model=params.model,
            sampling=sampling,
            created=created,
            prompt=p if isinstance(p, str) else None,
            prompt_token_ids=None if isinstance(p, str) else p,
            include_usage=params.include_usage,
        )
        for p in prompts
    ]
    return _request(f"cmpl-{uuid.uuid4().hex}", bases, n)
