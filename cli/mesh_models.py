"""The models of the local mesh over gRPC: imported into the registry, kept warm through
the proxy, and waited for until the front door lists a ready replica of each."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Collection, Sequence
from pathlib import Path

import grpc
from helios.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)

from cli.keys import bearer
from cli.processes import ServiceStartError
from runtime.channels import create_channel

# `helios up`'s records, whichever of its modules writes them.
logger = logging.getLogger("helios.up")

MODEL_READY_TIMEOUT = 180.0
# How often `helios up` asks again while the proxy has yet to hear from any worker.
WORKER_WAIT_S = 0.25
# Registry ids are org/name; the models `helios up` serves are recorded under this org.
REGISTRY_ORG = "helios"


async def import_models(
    registry_address: str, models: Sequence[tuple[str, Path]]
) -> dict[str, str]:
    """Import the models into the registry (content-addressed: a re-run is a no-op), so
    that they are served the way every model is: registry -> storaged -> worker. Returns
    name -> registry id of those imported; one whose import fails is left out (and is
    served from its directory instead)."""
    imported: dict[str, str] = {}
    async with create_channel(registry_address) as channel:  # mTLS under --tls
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        for name, path in models:
            model_id = f"{REGISTRY_ORG}/{name}"
            try:
                async for step in stub.ImportModel(
                    registry_pb2.ImportModelRequest(source=str(path), model_id=model_id)
                ):
                    if step.HasField("version"):
                        imported[name] = model_id
                        logger.info(
                            "model in the registry",
                            extra={"model": model_id, "version": step.version.version},
                        )
            except grpc.aio.AioRpcError as error:
                logger.warning(
                    "could not import the model into the registry",
                    extra={"model": name, "error": error.details()},
                )
    return imported


async def warm_models(proxy_address: str, model_ids: Collection[str]) -> None:
    """Ask the proxy to keep one replica of each registry model warm, one after the
    other: the proxy places a model only on a worker that is not loading another (asked
    at once, the second was refused "0 more workers have room"); it places each
    (memory-aware) and the worker fetches it through storaged."""
    async with create_channel(proxy_address) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        for model_id in model_ids:
            await _warm_model(admin, model_id)


async def wait_for_models(front_door: str, wanted: set[str], admin_key: str) -> None:
    """Until every model in ``wanted`` has a ready replica, as seen through Envoy."""
    deadline = time.monotonic() + MODEL_READY_TIMEOUT
    async with grpc.aio.insecure_channel(front_door) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        while True:
            with contextlib.suppress(grpc.aio.AioRpcError):
                listing = await stub.ListModels(
                    inference_pb2.ListModelsRequest(), timeout=5, metadata=bearer(admin_key)
                )
                ready = {m.id for m in listing.data if m.ready_replicas > 0}
                if wanted <= ready:
                    return
            if time.monotonic() > deadline:
                raise ServiceStartError(
                    f"models {sorted(wanted)} not ready after {MODEL_READY_TIMEOUT:.0f}s"
                )
            await asyncio.sleep(0.2)


def _no_worker_yet(error: grpc.aio.AioRpcError) -> bool:
    """The proxy's answer before any worker's first heartbeat (proxy/placement.py)."""
    return error.code() == grpc.StatusCode.UNAVAILABLE and "no worker is available" in (
        error.details() or ""
    )


async def _warm_model(admin: admin_pb2_grpc.AdminServiceStub, model_id: str) -> None:
    """ScaleModel(model_id, 1), asked again while the proxy has heard from no worker yet."""
    deadline = time.monotonic() + MODEL_READY_TIMEOUT
    while True:
        try:
            await admin.ScaleModel(
                admin_pb2.ScaleModelRequest(model_id=model_id, replicas=1),
                timeout=max(1.0, deadline - time.monotonic()),
            )
            return
        except grpc.aio.AioRpcError as error:
            # The workers are up, but the proxy knows them from their first heartbeat:
            # on a loaded machine that can come after this call.
            if _no_worker_yet(error) and time.monotonic() < deadline:
                await asyncio.sleep(WORKER_WAIT_S)
                continue
            raise ServiceStartError(
                f"could not load {model_id}: {error.code().name}: {error.details()}"
            ) from error
