"""Embeddings on this worker's engines (the worker's InferenceService backend,
worker.inference.EngineBackend, hands them here). Domain only (no protobuf).

Like a generation, an embeddings request takes its fair turn in the model's admission
queue (ModelManager.serve) and is counted in the model's usage; an engine failure
(INTERNAL) is UNAVAILABLE, retryable on another replica; a chat model asked for
embeddings refuses it itself (INVALID_ARGUMENT, see EngineClient.embed).
"""

from __future__ import annotations

from openai_compat.embeddings import EmbeddingJob, EmbeddingResult
from worker.engine.base import EmbeddingRequest, FinishReason
from worker.metrics import ModelUsage
from worker.models import ModelManager
from worker.request_usage import RequestEnding, counted_request


async def embed_on_engine(
    models: ModelManager,
    usage: ModelUsage,
    job: EmbeddingJob,
    *,
    authorization: str | None,
    deadline_s: float | None,
) -> EmbeddingResult:
    """``job``'s vectors from the engine of ``job.model`` here."""
    ending = RequestEnding()
    with counted_request(usage, job.model, ending):
        async with models.serve(
            job.model, job.request_id, authorization=authorization, deadline_s=deadline_s
        ) as engine:
            output = await engine.embed(
                EmbeddingRequest(job.request_id, job.inputs, job.dimensions)
            )
        usage.finished(output.prompt_tokens, 0, None)
        ending.reason = FinishReason.STOP
    return EmbeddingResult(output.vectors, output.prompt_tokens)
