"""WorkerService's generation messages <-> the domain values of :mod:`openai_compat` and
:mod:`worker_api.disagg`, for every caller of a worker's Generate, Prefill and Decode."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from helios.v1 import worker_pb2 as pb

from openai_compat.backend import Step
from openai_compat.logprobs import TokenLogprob
from openai_compat.params import Job
from runtime.errors import UnavailableError
from worker_api.disagg import PrefillPeer, PrefillResult
from worker_api.tool_wire import chat_to_pb, guide_to_pb

_FINISH_REASONS = {
    pb.FINISH_REASON_STOP: "stop",
    pb.FINISH_REASON_LENGTH: "length",
}


def job_to_pb(job: Job) -> pb.GenerateRequest:
    """The GenerateRequest of a validated OpenAI job."""
    s = job.sampling
    request = pb.GenerateRequest(
        request_id=job.request_id,
        model=job.model,
        sampling=pb.SamplingParams(
            **s.by_name() | {"logit_bias": dict(s.logit_bias), "guide": guide_to_pb(s.guide)}
        ),
    )
    if job.messages is not None:
        chat_to_pb(job, request.chat)
    elif job.prompt_token_ids is not None:
        request.prompt_tokens.token_ids.extend(job.prompt_token_ids)
    else:
        request.prompt = job.prompt or ""
    return request


def logprobs_to_pb(logprobs: Iterable[TokenLogprob]) -> list[pb.TokenLogprob]:
    """GenerateResponse.logprobs for an engine's token log probabilities."""
    return [
        pb.TokenLogprob(
            token=lp.token,
            logprob=lp.logprob,
            top=[pb.TokenAlternative(token=t, logprob=v) for t, v in lp.top],
        )
        for lp in logprobs
    ]


def logprobs_from_pb(logprobs: Iterable[pb.TokenLogprob]) -> tuple[TokenLogprob, ...]:
    """The token log probabilities a worker sent."""
    return tuple(
        TokenLogprob(
            token=lp.token,
            logprob=lp.logprob if lp.HasField("logprob") else None,
            top=tuple((a.token, a.logprob) for a in lp.top),
        )
        for lp in logprobs
    )


def step_from_pb(response: pb.GenerateResponse, address: str) -> Step:
    """One step a worker at ``address`` sent; an aborted generation is the worker's
    failure (it is being unloaded or shut down)."""
    if response.finish_reason == pb.FINISH_REASON_ABORT:
        raise UnavailableError(f"worker {address} aborted the generation")
    return Step(
        text=response.text,
        prompt_tokens=response.prompt_tokens,
        completion_tokens=response.completion_tokens,
        finish_reason=_FINISH_REASONS.get(response.finish_reason),
        logprobs=logprobs_from_pb(response.logprobs),
    )


def prefill_result_from_pb(response: pb.PrefillResponse, address: str) -> PrefillResult:
    """What the prefill worker at ``address`` answered."""
    first = response.first
    return PrefillResult(
        first=step_from_pb(first, address),
        first_token_id=first.token_ids[0] if first.token_ids else None,
        kv_handle=response.kv_cache_handle,
        # A worker without --advertise-address leaves it empty: it is then reached
        # where the caller reached it.
        prefill_worker=response.prefill_worker or address,
    )


def prefill_pools_to_pb(pools: Mapping[str, Sequence[PrefillPeer]]) -> pb.PrefillPools:
    """HeartbeatRequest.prefill_pools for ``pools`` (model -> its prefill workers)."""
    return pb.PrefillPools(
        pools=[
            pb.PrefillPool(
                model=model,
                endpoints=[
                    pb.PrefillEndpoint(
                        address=p.address,
                        running_requests=p.running,
                        waiting_requests=p.waiting,
                        kv_cache_usage=p.kv_cache_usage,
                    )
                    for p in peers
                ],
            )
            for model, peers in sorted(pools.items())
            if peers
        ]
    )


def prefill_pools_from_pb(pools: pb.PrefillPools) -> dict[str, list[PrefillPeer]]:
    """The pools a heartbeat handed over (endpoints without an address left out)."""
    return {
        pool.model: [
            PrefillPeer(e.address, e.running_requests, e.waiting_requests, e.kv_cache_usage)
            for e in pool.endpoints
            if e.address
        ]
        for pool in pools.pools
    }
