"""Disaggregated serving with no proxy in the path, over real gRPC: a decode-role worker
serves OpenAI requests on its own InferenceService by running Prefill on a prefill-role
peer (which the control plane's heartbeat names) and decoding locally from the KV cache it
pulls from that peer. Real worker servers on port 0 with the reference engine on the tiny
model; a `both` worker gives the single-worker answer to compare with."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from helios.v1 import inference_pb2 as ipb
from helios.v1 import inference_pb2_grpc, worker_pb2_grpc
from helios.v1 import worker_pb2 as wpb
from support.fakes import serve_worker_inference

from models.tinymodel import DEFAULT_MODEL_NAME, build_tiny_model
from openai_compat.protocol import EDGE_HEADER
from runtime.server import RunningServer
from worker.models import ModelManager
from worker.prefill_peers import PrefillPeers
from worker.server import transformers_engine_factory
from worker_api.disagg import PrefillPeer

MODEL = DEFAULT_MODEL_NAME


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.getbasetemp() / DEFAULT_MODEL_NAME)


@dataclass
class Worker:
    role: str
    server: RunningServer
    channel: grpc.aio.Channel
    manager: ModelManager

    @property
    def address(self) -> str:
        return self.server.address

    @property
    def control(self) -> worker_pb2_grpc.WorkerServiceStub:
        return worker_pb2_grpc.WorkerServiceStub(self.channel)

    @property
    def inference(self) -> inference_pb2_grpc.InferenceServiceStub:
        return inference_pb2_grpc.InferenceServiceStub(self.channel)

    async def stats(self) -> wpb.LoadedModel:
        beat = await self.control.Heartbeat(wpb.HeartbeatRequest(), timeout=10)
        return next(m for m in beat.models if m.model == MODEL)

    async def hand_prefill_pool(self, *peers: wpb.PrefillEndpoint) -> None:
        """What the control plane's heartbeat tells a decode worker."""
        pools = wpb.PrefillPools()
        if peers:
            pools.pools.add(model=MODEL).endpoints.extend(peers)
        await self.control.Heartbeat(wpb.HeartbeatRequest(prefill_pools=pools), timeout=10)

    async def stop(self) -> None:
        await self.channel.close(None)
        await self.server.stop(0)
        await self.manager.shutdown()


StartWorker = Callable[[str], Awaitable[Worker]]


@pytest_asyncio.fixture
async def start(tiny_model_dir: Path) -> AsyncIterator[StartWorker]:
    started: list[Worker] = []

    async def start_worker(role: str) -> Worker:
        manager = ModelManager(
            transformers_engine_factory(max_concurrency=2),
            engine_kind="transformers",
            capacity_bytes=1 << 30,
        )
        async for _ in manager.load(MODEL, tiny_model_dir):
            continue
        server = await serve_worker_inference(manager, worker_id=f"{role}-w", role=role)
        worker = Worker(role, server, grpc.aio.insecure_channel(server.address), manager)
        started.append(worker)
        return worker

    yield start_worker
    for worker in started:
        await worker.stop()


async def dead_address(start: StartWorker) -> str:
    """The address of a worker that is gone (a port that was just serving, now closed)."""
    worker = await start("prefill")
    address = worker.address
    await worker.stop()
    return address


def chat(max_tokens: int, **fields: object) -> ipb.ChatCompletionParams:
    params = ipb.ChatCompletionParams(model=MODEL, max_tokens=max_tokens, temperature=0.0)
    params.messages.add(role="user").content.string_value = "Tell me about the sea"
    for name, value in fields.items():
        setattr(params, name, value)
    return params


async def test_decode_worker_serves_chat_by_prefilling_on_a_peer(start: StartWorker) -> None:
    prefill, decode, both = await start("prefill"), await start("decode"), await start("both")
    await decode.hand_prefill_pool(wpb.PrefillEndpoint(address=prefill.address))
    prefill_before, decode_before = await prefill.stats(), await decode.stats()

    request = ipb.CreateChatCompletionRequest(params=chat(24))
    expected = await both.inference.CreateChatCompletion(request, timeout=60)
    got = await decode.inference.CreateChatCompletion(request, timeout=60)
    text = got.choices[0].message.content
    assert len(set(text)) > 3, text  # a real generation, not one token repeated
    assert text == expected.choices[0].message.content
    assert got.choices[0].finish_reason == expected.choices[0].finish_reason
    assert got.usage == expected.usage

    streamed = [
        c
        async for c in decode.inference.StreamChatCompletion(
            ipb.StreamChatCompletionRequest(params=chat(24)), timeout=60
        )
    ]
    assert not any(c.HasField("error") for c in streamed)
    assert len(streamed) > 2  # the first token (Prefill's) came on its own, then Decode's
    assert "".join(c.choices[0].delta.content for c in streamed if c.choices) == text

    # Each did its own phase: one token per request on the prefill worker (whose
    # InferenceService served nothing), the rest on the decode worker, which counts the
    # two requests as its own.
    prefill_after, decode_after = await prefill.stats(), await decode.stats()
    made = got.usage.completion_tokens
    assert prefill_after.generated_tokens_total - prefill_before.generated_tokens_total == 2
    assert prefill_after.requests_total == prefill_before.requests_total
    assert decode_after.generated_tokens_total - decode_before.generated_tokens_total == 2 * (
        made - 1
    )
    assert decode_after.requests_total - decode_before.requests_total == 2
    assert decode_after.completion_tokens_total - decode_before.completion_tokens_total == 2 * made


async def test_one_token_answer_comes_from_the_prefill_alone(start: StartWorker) -> None:
    prefill, decode = await start("prefill"), await start("decode")
    await decode.hand_prefill_pool(wpb.PrefillEndpoint(address=prefill.address))
    decode_before = await decode.stats()
    got = await decode.inference.CreateChatCompletion(
        ipb.CreateChatCompletionRequest(params=chat(1)), timeout=60
    )
    assert (got.choices[0].finish_reason, got.usage.completion_tokens) == ("length", 1)
    decode_after = await decode.stats()
    assert decode_after.generated_tokens_total == decode_before.generated_tokens_total
    assert decode_after.requests_total == decode_before.requests_total + 1


async def test_a_dead_prefill_worker_is_passed_over_for_another(start: StartWorker) -> None:
    gone = await dead_address(start)
    prefill, decode = await start("prefill"), await start("decode")
    # The dead one reports no load, the live one some: the dead one is tried first.
    await decode.hand_prefill_pool(
        wpb.PrefillEndpoint(address=gone),
        wpb.PrefillEndpoint(address=prefill.address, running_requests=3),
    )
    before = (await prefill.stats()).generated_tokens_total
    got = await decode.inference.CreateChatCompletion(
        ipb.CreateChatCompletionRequest(params=chat(8, ignore_eos=True)), timeout=60
    )
    assert got.usage.completion_tokens == 8
    assert (await prefill.stats()).generated_tokens_total == before + 1
    # Streamed too: the failover happens before the first token, the client sees none of it.
    chunks = [
        c
        async for c in decode.inference.StreamChatCompletion(
            ipb.StreamChatCompletionRequest(params=chat(8, ignore_eos=True)), timeout=60
        )
    ]
    assert "".join(c.choices[0].delta.content for c in chunks if c.choices) == (
        got.choices[0].message.content
    )


async def test_no_prefill_worker_left_is_unavailable(start: StartWorker) -> None:
    decode = await start("decode")
    request = ipb.CreateChatCompletionRequest(params=chat(8))
    # No pool handed over yet: a decode worker alone cannot answer.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await decode.inference.CreateChatCompletion(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "no prefill worker" in (info.value.details() or "")
    # A pool whose every worker is dead: each is tried once, then UNAVAILABLE (Envoy
    # retries another decode worker).
    await decode.hand_prefill_pool(
        wpb.PrefillEndpoint(address=await dead_address(start)),
        wpb.PrefillEndpoint(address=await dead_address(start)),
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await decode.inference.CreateChatCompletion(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "prefill failed" in (info.value.details() or "")
    # A status probe (no prefill_pools) leaves the pool as the control plane set it, and
    # an empty pool list takes it away.
    await decode.stats()
    await decode.hand_prefill_pool()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await decode.inference.CreateChatCompletion(request, timeout=30)
    assert "no prefill worker" in (info.value.details() or "")


async def test_a_prefill_worker_answers_no_openai_requests(start: StartWorker) -> None:
    prefill = await start("prefill")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await prefill.inference.CreateChatCompletion(
            ipb.CreateChatCompletionRequest(params=chat(4)), timeout=30
        )
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def read_until_unloaded(
    decode: Worker, call: AsyncIterator[ipb.StreamChatCompletionResponse]
) -> list[ipb.StreamChatCompletionResponse]:
    """The stream's chunks; after the third, the model is unloaded under the running
    decode (a short drain, then the request is aborted)."""
    chunks = []
    async for chunk in call:
        chunks.append(chunk)
        if len(chunks) == 3:
            await decode.control.UnloadModel(
                wpb.UnloadModelRequest(model=MODEL, drain_timeout_seconds=0.1), timeout=30
            )
    return chunks


@pytest.mark.parametrize("rest", [True, False], ids=["rest", "grpc"])
async def test_decode_failure_after_the_first_token_ends_the_stream(
    start: StartWorker, rest: bool
) -> None:
    prefill, decode = await start("prefill"), await start("decode")
    await decode.hand_prefill_pool(wpb.PrefillEndpoint(address=prefill.address))
    call = decode.inference.StreamChatCompletion(
        ipb.StreamChatCompletionRequest(params=chat(1500, ignore_eos=True)),
        timeout=60,
        metadata=((EDGE_HEADER, "rest"),) if rest else None,
    )
    if rest:
        # Over HTTP/1.1 a status after the first chunk is lost: the REST late-error chunk.
        chunks = await read_until_unloaded(decode, call)
        assert chunks[-1].HasField("error"), chunks[-1]
        assert chunks[-1].error.code == "UNAVAILABLE"
        assert sum(1 for c in chunks if c.choices) >= 3
    else:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await read_until_unloaded(decode, call)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_client_gone_mid_decode_aborts_the_decode(start: StartWorker) -> None:
    prefill, decode = await start("prefill"), await start("decode")
    await decode.hand_prefill_pool(wpb.PrefillEndpoint(address=prefill.address))
    before = await decode.stats()
    call = decode.inference.StreamChatCompletion(
        ipb.StreamChatCompletionRequest(params=chat(1500, ignore_eos=True)), timeout=60
    )
    received = 0
    async for _ in call:
        received += 1
        if received == 5:  # the first token (the peer's prefill) and four decode steps
            break
    call.cancel()
    deadline = time.monotonic() + 15
    while True:
        stats = await decode.stats()
        if stats.running_requests == 0 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert stats.running_requests == 0
    assert stats.aborted_requests_total == before.aborted_requests_total + 1
    assert stats.generated_tokens_total - before.generated_tokens_total < 1499


def test_peers_pick_the_least_outstanding_and_pass_over_recent_failures() -> None:
    now = [100.0]
    peers = PrefillPeers(failure_cooldown_s=5.0, clock=lambda: now[0])
    assert peers.pick(MODEL) is None
    peers.update({MODEL: [PrefillPeer("a:1", running=2), PrefillPeer("b:1"), PrefillPeer("c:1")]})
    assert peers.pick(MODEL) == "b:1"  # no own outstanding anywhere: the least load
    with peers.lease("b:1"):
        assert peers.pick(MODEL) == "c:1"
        with peers.lease("c:1"):
            assert peers.pick(MODEL) == "a:1"  # own outstanding first, reported load second
    assert peers.outstanding("b:1") == 0
    peers.failed("b:1")
    assert peers.pick(MODEL) == "c:1"
    assert peers.pick(MODEL, {"c:1", "a:1"}) == "b:1"  # the last resort is tried anyway
    now[0] += 5.0
    assert peers.pick(MODEL) == "b:1"  # cooled down
    peers.failed("b:1")
    peers.succeeded("b:1")
    assert peers.pick(MODEL) == "b:1"
    peers.update({})
    assert peers.pool(MODEL) == () and peers.pick(MODEL) is None


async def test_decode_side_requests_take_their_turn_in_the_admission_queue(
    start: StartWorker,
) -> None:
    """A decode worker's engine runs at most its capacity (2 here) of split requests at
    once, like whole ones: the others wait in the model's fair queue."""
    prefill, decode = await start("prefill"), await start("decode")
    await decode.hand_prefill_pool(wpb.PrefillEndpoint(address=prefill.address))
    request = ipb.CreateChatCompletionRequest(params=chat(160, ignore_eos=True))
    calls = [decode.inference.CreateChatCompletion(request, timeout=120) for _ in range(4)]
    queued_seen = 0
    pending = [asyncio.ensure_future(call) for call in calls]
    while not all(p.done() for p in pending):
        queued_seen = max(queued_seen, decode.manager.admission.queued(MODEL))
        await asyncio.sleep(0.005)
    answers = [p.result() for p in pending]
    assert queued_seen >= 1
    assert all(a.usage.completion_tokens == 160 for a in answers)
