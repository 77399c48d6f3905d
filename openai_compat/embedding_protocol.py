"""Embeddings over helios.v1's InferenceService: the protobuf mirror <-> the domain values
of :mod:`openai_compat.embeddings`, and the CreateEmbedding method every InferenceService
servicer shares (the worker's for warm requests, the proxy's for cold ones)."""

from __future__ import annotations

from typing import Any

import grpc
from helios.v1 import inference_pb2 as pb

from openai_compat.backend import InferenceBackend
from openai_compat.embeddings import (
    EmbeddingJob,
    EmbeddingResult,
    decode_base64,
    embedding_job,
    encode_base64,
)
from openai_compat.json_values import message_json
from openai_compat.protocol import call_info


def embedding_job_from_pb(params: pb.EmbeddingParams) -> EmbeddingJob:
    """The validated job of an embeddings request (InvalidArgumentError names the field)."""
    raw_input = message_json("input", params.input) if params.HasField("input") else None
    return embedding_job(
        params.model,
        raw_input,
        encoding_format=params.encoding_format,
        dimensions=params.dimensions if params.HasField("dimensions") else None,
        user=params.user,
    )


def embedding_job_to_pb(job: EmbeddingJob, encoding_format: str) -> pb.EmbeddingParams:
    """``job`` as a request body again (the proxy relays a cold request to a worker)."""
    inputs: list[Any] = [i if isinstance(i, str) else list(i) for i in job.inputs]
    params = pb.EmbeddingParams(model=job.model, encoding_format=encoding_format, user=job.user)
    params.input.list_value.extend(inputs)
    if job.dimensions is not None:
        params.dimensions = job.dimensions
    return params


def embedding_response(job: EmbeddingJob, result: EmbeddingResult) -> pb.CreateEmbeddingResponse:
    """OpenAI's list of embeddings, each encoded as the request asked."""
    response = pb.CreateEmbeddingResponse(
        object="list",
        model=job.model,
        usage=pb.EmbeddingUsage(
            prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens
        ),
    )
    for index, vector in enumerate(result.vectors):
        item = response.data.add(object="embedding", index=index)
        if job.encoding_format == "base64":
            item.embedding.string_value = encode_base64(vector)
        else:
            item.embedding.list_value.extend(vector)
    return response


def embedding_result_from_pb(response: pb.CreateEmbeddingResponse) -> EmbeddingResult:
    """A worker's answer as domain values (vectors sent as base64 or as numbers)."""
    vectors: list[list[float]] = []
    for item in response.data:
        value = item.embedding
        if value.WhichOneof("kind") == "string_value":
            vectors.append(decode_base64(value.string_value))
        else:
            vectors.append([v.number_value for v in value.list_value.values])
    return EmbeddingResult(vectors, response.usage.prompt_tokens)


class EmbeddingsServicer:
    """InferenceService.CreateEmbedding over ``self.backend`` (mixed into the OpenAI
    servicer)."""

    backend: InferenceBackend

    async def CreateEmbedding(
        self, request: pb.CreateEmbeddingRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateEmbeddingResponse:
        job = embedding_job_from_pb(request.params)
        result = await self.backend.embed(job, call_info(context))
        return embedding_response(job, result)
