"""What workers serve without the proxy (requests Envoy routes straight to a worker's
InferenceService) reaches the proxy through heartbeats: the idle-TTL clock sees it, and
the counters become deltas exactly once. A real worker server (fake engine) over gRPC."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
from helios.v1 import inference_pb2 as pb
from helios.v1 import inference_pb2_grpc
from support.fakes import fake_worker

from proxy.cold_start import ModelSpec
from proxy.control import ControlPlane
from proxy.estimate import MemoryEstimator
from proxy.fleet import WorkerPool
from proxy.served import ServedDelta, ServedLedger, ServedTotals
from proxy.worker_client import GrpcWorkerConnection

MODEL = "fake-model"


def direct_request(max_tokens: int = 2) -> pb.CreateChatCompletionRequest:
    params = pb.ChatCompletionParams(model=MODEL, max_tokens=max_tokens)
    params.messages.add(role="user").content.string_value = "hello"
    return pb.CreateChatCompletionRequest(params=params)


def test_ledger_turns_cumulative_counters_into_deltas() -> None:
    ledger = ServedLedger()
    assert ledger.update("w1", MODEL, ServedTotals(5, 50, 20, 1000)) is None  # a baseline
    assert ledger.update("w1", MODEL, ServedTotals(7, 60, 30, 2000)) == ServedDelta(2, 20, True)
    assert ledger.update("w1", MODEL, ServedTotals(7, 60, 30, 2000)) == ServedDelta(0, 0, False)
    # The worker restarted: its counters start again from zero.
    assert ledger.update("w1", MODEL, ServedTotals(1, 3, 4, 3000)) == ServedDelta(1, 7, True)
    ledger.forget("w1")
    assert ledger.update("w1", MODEL, ServedTotals(2, 6, 8, 4000)) is None


async def test_idle_clock_sees_requests_the_worker_served_directly(tmp_path: Path) -> None:
    """A model that only Envoy's direct route uses stays loaded past the idle TTL while
    used, and is unloaded once it has been idle that long."""
    ttl = 1.0
    async with fake_worker(tmp_path, MODEL) as address:
        plane = ControlPlane.create(
            WorkerPool([address]),
            GrpcWorkerConnection,
            [ModelSpec(MODEL, tmp_path / MODEL)],
            MemoryEstimator(None),
            idle_ttl_s=ttl,
        )
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                worker = inference_pb2_grpc.InferenceServiceStub(channel)

                async def beat() -> None:
                    await plane.refresh()
                    await plane.warm.reconcile()

                await beat()
                busy_until = time.monotonic() + 2 * ttl
                while time.monotonic() < busy_until:
                    await worker.CreateChatCompletion(direct_request())
                    await beat()
                    await asyncio.sleep(0.1)
                listed = await worker.ListModels(pb.ListModelsRequest())
                assert [m.id for m in listed.data] == [MODEL]  # used: still loaded

                idle_until = time.monotonic() + 3 * ttl
                while plane.pool.holders(MODEL) and time.monotonic() < idle_until:
                    await asyncio.sleep(0.1)
                    await beat()
                listed = await worker.ListModels(pb.ListModelsRequest())
                assert [m.id for m in listed.data] == []  # idle past the TTL: unloaded
        finally:
            await plane.stop()
