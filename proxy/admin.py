"""AdminService servicer: the operator's view of the mesh (thin: the control plane
and the agent registry do the work)."""

from __future__ import annotations

import grpc
from helios.v1 import admin_pb2 as pb
from helios.v1 import admin_pb2_grpc

from proxy.dependencies import DependencyMonitor, mesh_health
from proxy.fleet import WorkerPool, WorkerView
from proxy.status import MeshStatus
from proxy.status_probe import StatusReporter
from proxy.warm_pools import WarmPools
from runtime.errors import InvalidArgumentError, UnavailableError


def _model_id(value: str) -> str:
    if not value:
        raise InvalidArgumentError("model_id: must not be empty")
    return value


def _stored_only(agent: WorkerView) -> list[pb.AgentModel]:
    """The models the agent's storaged holds that it has not loaded: state "stored",
    cache_level the fastest tier holding the files (ram, nvme or remote)."""
    loaded = {m.lower() for m in agent.models}
    return [
        pb.AgentModel(model=model, state="stored", cache_level=level.value)
        for model, level in sorted(agent.stored.items())
        if model not in loaded
    ]


def memory_pressure(pool: WorkerPool) -> float:
    total = sum(a.memory_total for a in pool.agents() if a.healthy)
    free = sum(a.memory_free for a in pool.agents() if a.healthy)
    return 0.0 if total <= 0 else min(1.0, max(0.0, 1 - free / total))


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    """Preload, scale, evict; memory and health of every agent."""

    def __init__(
        self,
        control: WarmPools,
        dependencies: DependencyMonitor | None = None,
        status: StatusReporter | None = None,
    ):
        self._control = control
        self._pool = control.pool
        self._dependencies = dependencies
        self._status = status

    async def PreloadModel(
        self, request: pb.PreloadModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.PreloadModelResponse:
        workers = await self._control.preload(_model_id(request.model_id), request.replicas)
        return pb.PreloadModelResponse(workers=workers)

    async def GetMemoryStats(
        self, request: pb.GetMemoryStatsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetMemoryStatsResponse:
        workers = []
        for agent in sorted(self._pool.agents(), key=lambda a: a.address):
            workers.append(
                pb.WorkerMemory(
                    worker_id=agent.worker_id,
                    total_bytes=agent.memory_total,
                    free_bytes=agent.memory_free,
                    models=sorted(agent.ready_models),
                    address=agent.address,
                    state=agent.state.value,
                    healthy=agent.healthy,
                    outstanding=agent.outstanding,
                    memory_source=agent.memory_source,
                    model_states=[
                        pb.AgentModel(
                            model=m.model,
                            state=m.state,
                            cache_level=m.cache_level.value,
                            running_requests=m.running,
                            waiting_requests=m.waiting,
                            kv_cache_usage=m.kv_cache_usage,
                            memory_bytes=m.memory_bytes,
                        )
                        for m in sorted(agent.models.values(), key=lambda m: m.model)
                    ]
                    + _stored_only(agent),
                )
            )
        return pb.GetMemoryStatsResponse(workers=workers)

    async def ScaleModel(
        self, request: pb.ScaleModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.ScaleModelResponse:
        workers = await self._control.scale(
            _model_id(request.model_id), request.replicas, request.max_replicas
        )
        return pb.ScaleModelResponse(replicas=len(workers), workers=workers)

    async def EvictModel(
        self, request: pb.EvictModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.EvictModelResponse:
        workers = await self._control.evict(_model_id(request.model_id))
        return pb.EvictModelResponse(workers=workers)

    async def GetHealth(
        self, request: pb.GetHealthRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetHealthResponse:
        health = mesh_health(self._pool, self._dependencies)
        return pb.GetHealthResponse(
            status=health.status,
            memory_pressure=memory_pressure(self._pool),
            healthy_workers=health.healthy_workers,
            total_workers=health.total_workers,
            dependencies=[
                pb.DependencyHealth(name=d.name, kind=d.kind, state=d.state)
                for d in health.dependencies
            ],
        )

    async def GetStatus(
        self, request: pb.GetStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetStatusResponse:
        if self._status is None:
            raise UnavailableError("this proxy keeps no status")
        return status_to_pb(await self._status.status())


def status_to_pb(status: MeshStatus) -> pb.GetStatusResponse:
    return pb.GetStatusResponse(
        status=status.status,
        version=status.version,
        models=[
            pb.ModelStatus(
                model=m.model,
                state=m.state,
                phase=m.phase,
                ready_replicas=m.ready_replicas,
                running_requests=m.running,
                waiting_requests=m.waiting,
                tokens_per_second=m.tokens_per_second,
                time_to_first_token_seconds=m.time_to_first_token_s,
                load_phase_seconds=dict(m.load_phases),
            )
            for m in status.models
        ],
        workers=[
            pb.WorkerSummary(
                worker_id=w.worker_id,
                state=w.state,
                healthy=w.healthy,
                memory_total_bytes=w.memory_total,
                memory_free_bytes=w.memory_free,
                running_requests=w.running,
                waiting_requests=w.waiting,
                kv_cache_usage=w.kv_cache_usage,
                models=list(w.models),
            )
            for w in status.workers
        ],
        tiers=[
            pb.StorageTierStatus(
                tier=t.tier,
                used_bytes=t.used_bytes,
                capacity_bytes=t.capacity_bytes,
                files=t.files,
                hits=t.hits,
            )
            for t in status.tiers
        ],
        tokens_per_second=status.tokens_per_second,
        time_to_first_token_seconds=status.time_to_first_token_s,
        requests_total=status.requests_total,
        errors=[
            pb.RecentError(unix_ms=e.unix_ms, source=e.source, message=e.message)
            for e in status.errors
        ],
        unix_ms=status.unix_ms,
    )
