"""A request's sampling as vLLM's SamplingParams (with its structured outputs), read the
way the reference engine reads it. vLLM is imported when a request is mapped, never when
this module is."""

from __future__ import annotations

from typing import Any

from openai_compat.structured import Guide, GuideKind
from runtime.errors import InvalidArgumentError
from worker.engine.base import SamplingParams
from worker.engine.prompt_bounds import validate_sampling

__all__ = ["sampling_params", "structured_outputs"]

# The smallest temperature vLLM samples with (its _MAX_TEMP): it raises smaller ones
# to this, logging a warning each time.
_VLLM_MIN_TEMPERATURE = 1e-2


def sampling_params(s: SamplingParams) -> Any:
    """vLLM's SamplingParams for ``s``, or InvalidArgumentError.

    Degenerate values are normalised the way the reference engine reads them: a
    temperature below SAMPLING_EPS is greedy (0; vLLM itself would raise 1e-45 to 0.01
    and sample), one between that and 0.01 is 0.01 (what vLLM would make of it, without
    its warning per request), a seed is taken modulo 2**64 (vLLM reads -1 as "no seed";
    torch takes the same 64 bits), and anything vLLM still refuses is the request's
    fault.
    """
    from vllm import SamplingParams as VllmSamplingParams
    from vllm.exceptions import VLLMClientError
    from vllm.sampling_params import RequestOutputKind

    validate_sampling(s)
    try:
        return VllmSamplingParams(
            n=1,
            max_tokens=s.max_tokens,
            temperature=0.0 if s.greedy else max(s.temperature, _VLLM_MIN_TEMPERATURE),
            top_p=s.top_p,
            top_k=s.top_k,  # 0 disables, as in Helios
            seed=None if s.seed is None else s.seed % 2**64,
            stop=list(s.stop) or None,
            ignore_eos=s.ignore_eos,
            skip_special_tokens=True,
            output_kind=RequestOutputKind.DELTA,
            structured_outputs=structured_outputs(s.guide),
        )
    except (VLLMClientError, ValueError) as exc:  # e.g. a temperature above vLLM's 2
        raise InvalidArgumentError(f"vLLM rejected the sampling parameters: {exc}") from exc


def structured_outputs(guide: Guide | None) -> Any:
    """vLLM's StructuredOutputsParams for ``guide`` (None: none). JSON without free
    whitespace, as the reference engine generates it (worker/engine/grammar.py)."""
    if guide is None:
        return None
    from vllm.sampling_params import StructuredOutputsParams

    if guide.kind is GuideKind.JSON_SCHEMA:
        return StructuredOutputsParams(json=guide.spec, disable_any_whitespace=True)
    if guide.kind is GuideKind.JSON_OBJECT:
        return StructuredOutputsParams(json_object=True, disable_any_whitespace=True)
    if guide.kind is GuideKind.REGEX:
        return StructuredOutputsParams(regex=guide.spec)
    if guide.kind is GuideKind.CHOICE:
        return StructuredOutputsParams(choice=list(guide.choices))
    return StructuredOutputsParams(grammar=guide.spec)
