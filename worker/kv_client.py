"""The decode worker's side of a KV-cache transfer: pull a parked cache from a prefill
worker over gRPC (TransferKVCache) and rebuild its layers. A gRPC adapter: it turns
frames into domain :class:`~worker.kvtransfer.KVFrame` and gRPC failures into domain
errors, so the servicer stays thin."""

from __future__ import annotations

import logging
import time

import grpc
from helios.v1 import worker_pb2 as pb
from helios.v1 import worker_pb2_grpc

from runtime.channels import create_channel
from runtime.errors import ErrorCode
from runtime.grpc_errors import relayed_error
from worker.kvtransfer import KVAssembler, KVFrame, KVLayer

logger = logging.getLogger(__name__)

# The prefill worker's answers about the cache keep their meaning; any other code is the
# transfer failing (UnavailableError).
_KEPT_CODES = frozenset(
    {ErrorCode.NOT_FOUND, ErrorCode.INVALID_ARGUMENT, ErrorCode.FAILED_PRECONDITION}
)


class KVFetcher:
    """Pulls KV caches from prefill workers; keeps one channel per prefill worker."""

    def __init__(self, timeout_s: float = 60.0) -> None:
        self._timeout_s = timeout_s
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _stub(self, address: str) -> worker_pb2_grpc.WorkerServiceStub:
        channel = self._channels.get(address)
        if channel is None:
            # A cache may be larger than the default 4 MiB message limit in total, never
            # per frame; the raised receive limit only leaves room for big frames.
            channel = create_channel(address, options=[("grpc.max_receive_message_length", -1)])
            self._channels[address] = channel
        return worker_pb2_grpc.WorkerServiceStub(channel)

    async def fetch(self, address: str, model: str, handle: str) -> list[KVLayer]:
        """The layers of the cache ``handle`` parked on the worker at ``address``."""
        started = time.monotonic()
        assembler = KVAssembler()
        frames = 0
        size = 0
        try:
            call = self._stub(address).TransferKVCache(
                pb.TransferKVCacheRequest(kv_cache_handle=handle, model=model),
                timeout=self._timeout_s,
            )
            async for msg in call:
                frames += 1
                size += len(msg.safetensors)
                assembler.add(KVFrame(msg.layer, msg.num_layers, msg.token_offset, msg.safetensors))
        except grpc.aio.AioRpcError as exc:
            call = f"fetching kv cache {handle!r} from prefill worker {address}"
            raise relayed_error(exc, call, _KEPT_CODES) from exc
        layers = assembler.finish()
        logger.info(
            "kv cache fetched",
            extra={
                "kv_handle": handle,
                "prefill_worker": address,
                "frames": frames,
                "bytes": size,
                "seconds": round(time.monotonic() - started, 4),
            },
        )
        return layers

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close(None)
        self._channels.clear()
