"""How the vLLM adapter turns Helios sampling into vLLM's SamplingParams: degenerate
values are normalised as the reference engine reads them, and whatever vLLM refuses is
INVALID_ARGUMENT (the request's fault), never an engine failure. Needs vLLM importable,
not a running engine."""

from __future__ import annotations

import pytest

from runtime.errors import InvalidArgumentError
from worker.engine.base import SAMPLING_EPS, SamplingParams
from worker.engine.vllm_engine import vllm_available
from worker.engine.vllm_sampling import sampling_params

_MISSING = vllm_available()

pytestmark = pytest.mark.skipif(_MISSING is not None, reason=f"vLLM is not importable: {_MISSING}")


@pytest.mark.parametrize("temperature", [0.0, 1e-45, 1.4e-45, 1e-30, SAMPLING_EPS / 2])
def test_temperatures_below_the_epsilon_are_greedy(temperature: float) -> None:
    # vLLM alone would raise 1e-45 to 0.01 and sample; Helios means greedy.
    params = sampling_params(SamplingParams(temperature=temperature, top_p=0.5, top_k=3))
    assert params.temperature == 0.0
    assert (params.top_p, params.top_k) == (1.0, 0)  # vLLM's greedy form


def test_sampling_temperatures_pass_through_above_vllms_floor(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert sampling_params(SamplingParams(temperature=0.7)).temperature == pytest.approx(0.7)
    # Between the epsilon and 0.01 vLLM samples at 0.01 (and would warn each request).
    for temperature in (SAMPLING_EPS, 0.005):
        assert sampling_params(SamplingParams(temperature=temperature)).temperature == 0.01
    assert "maxed it out" not in caplog.text


@pytest.mark.parametrize(
    ("seed", "want"),
    [(None, None), (0, 0), (7, 7), (-1, 2**64 - 1), (-(2**63), 2**63), (2**63 - 1, 2**63 - 1)],
)
def test_seeds_map_onto_64_bits(seed: int | None, want: int | None) -> None:
    # -1 would mean "no seed" to vLLM: a client's -1 stays a fixed seed.
    assert sampling_params(SamplingParams(temperature=1.0, seed=seed)).seed == want


@pytest.mark.parametrize(
    ("sampling", "match"),
    [
        (SamplingParams(temperature=float("nan")), "temperature"),
        (SamplingParams(temperature=float("inf")), "temperature"),
        (SamplingParams(temperature=-1.0), "temperature"),
        (SamplingParams(temperature=2.5), "vLLM rejected the sampling parameters"),
        (SamplingParams(top_p=float("nan")), "top_p"),
        (SamplingParams(top_p=0.0), "top_p"),
        (SamplingParams(top_k=-1), "top_k"),
        (SamplingParams(max_tokens=0), "max_tokens"),
        (SamplingParams(stop=("",)), "stop"),
    ],
)
def test_what_vllm_cannot_take_is_invalid_argument(sampling: SamplingParams, match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        sampling_params(sampling)


def test_extremes_vllm_can_take() -> None:
    params = sampling_params(SamplingParams(temperature=2.0, top_p=1e-9, top_k=2**31 - 1))
    assert (params.temperature, params.top_p, params.top_k) == (2.0, 1e-9, 2**31 - 1)


def test_structured_outputs_map_onto_vllms() -> None:
    from openai_compat.structured import Guide, GuideKind
    from worker.engine.vllm_sampling import structured_outputs

    assert sampling_params(SamplingParams()).structured_outputs is None
    schema = Guide.json_schema({"type": "object"})
    params = sampling_params(SamplingParams(guide=schema)).structured_outputs
    assert params.json == schema.spec and params.disable_any_whitespace
    assert structured_outputs(Guide(GuideKind.JSON_OBJECT)).json_object is True
    assert structured_outputs(Guide(GuideKind.REGEX, "[a-z]+")).regex == "[a-z]+"
    assert structured_outputs(Guide(GuideKind.CHOICE, choices=("a", "b"))).choice == ["a", "b"]
    assert structured_outputs(Guide(GuideKind.GRAMMAR, 'root ::= "x"')).grammar == 'root ::= "x"'
