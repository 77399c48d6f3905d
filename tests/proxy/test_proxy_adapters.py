"""LoRA adapters in the control plane (domain): the adapter table each heartbeat hands a
worker, the Envoy routes of an adapter's two names (workers with the base READY that
know the adapter, holders weighted up), and the cold path (the base loaded, the request
relayed as <base>:<adapter>)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field

import pytest

from openai_compat.backend import Step
from openai_compat.params import Job, Sampling
from proxy.adapters import Adapter, adapter_table, find_adapter
from proxy.cold_path import ColdPath, RequestContext
from proxy.cold_start import ColdStarts
from proxy.estimate import MemoryEstimator
from proxy.fleet import AgentState, ModelOnAgent, WorkerPool, WorkerRole, WorkerStatus
from proxy.heartbeats import Heartbeats
from proxy.registry import RegistryCatalogue, RegistryModel
from proxy.servicer import ColdPathBackend
from proxy.xds_snapshot import WEIGHT_MAX, build_snapshot, cluster_name
from runtime.errors import InvalidArgumentError, NotFoundError
from worker_api.disagg import PrefillPeer

BASE = "org/base"
LORA = Adapter("org/lora", BASE, "v2")
MODELS = {
    BASE: RegistryModel(BASE, "v1", 1_000),
    "org/lora": RegistryModel("org/lora", "v2", 10, base=BASE),
    "org/other-lora": RegistryModel("org/other-lora", "v1", 10, base="org/other"),
}


class FakeRegistry:
    """The RegistryService calls the catalogue makes, from a dict."""

    def __init__(self, models: Mapping[str, RegistryModel]) -> None:
        self.models = dict(models)
        self.resolved: list[str] = []

    async def list_models(self) -> list[RegistryModel]:
        return list(self.models.values())

    async def resolve(self, reference: str) -> RegistryModel:
        self.resolved.append(reference)
        if reference not in self.models:
            raise NotFoundError(f"{reference} is not in the registry")
        return self.models[reference]


def catalogue(models: Mapping[str, RegistryModel] = MODELS) -> RegistryCatalogue:
    return RegistryCatalogue(FakeRegistry(models))  # type: ignore[arg-type]


def test_a_worker_is_handed_the_adapters_of_the_models_it_holds() -> None:
    assert adapter_table(MODELS, [BASE, "org/unrelated"]) == (LORA,)
    assert adapter_table(MODELS, []) == ()
    # No adapter in the registry at all: no table (heartbeats carry none).
    assert adapter_table({BASE: MODELS[BASE]}, [BASE]) is None
    assert LORA.names == ("org/lora", "org/base:org/lora")


async def test_a_request_names_an_adapter_by_id_or_by_pair() -> None:
    registry = catalogue()
    never = lambda _: False  # noqa: E731
    assert await find_adapter("org/lora", registry, never) == LORA
    assert await find_adapter("org/base:org/lora", registry, never) == LORA
    assert await find_adapter(BASE, registry, never) is None
    assert await find_adapter("org/unknown", registry, never) is None
    with pytest.raises(InvalidArgumentError, match="adapter of org/base, not of org/x"):
        await find_adapter("org/x:org/lora", registry, never)
    with pytest.raises(NotFoundError, match="no such LoRA adapter"):
        await find_adapter("org/base:org/nothing", registry, never)
    # Models the proxy knows (its catalogue, the agents') are no registry question.
    client = registry.client
    assert isinstance(client, FakeRegistry)
    asked = len(client.resolved)
    assert await find_adapter("local-model", registry, lambda _: True) is None
    assert await find_adapter("org/lora", None, never) is None
    assert len(client.resolved) == asked


def agent(
    pool: WorkerPool,
    address: str,
    *models: ModelOnAgent,
    table: Sequence[Adapter] = (),
    role: WorkerRole = WorkerRole.BOTH,
) -> None:
    pool.add(address)
    pool.record_heartbeat(
        address,
        worker_id=address,
        healthy=True,
        models=list(models),
        state=AgentState.READY,
        role=role,
        adapters=table,
    )


def test_an_adapter_is_routed_by_both_names_to_workers_with_the_base_holders_first() -> None:
    pool = WorkerPool()
    agent(pool, "10.0.0.1:1", ModelOnAgent(BASE, "ready", adapters=("org/lora",)), table=[LORA])
    agent(pool, "10.0.0.2:1", ModelOnAgent(BASE, "ready"), table=[LORA])
    # The base READY but no table yet (its next heartbeat brings it): not an endpoint.
    agent(pool, "10.0.0.3:1", ModelOnAgent(BASE, "ready"))
    agent(pool, "10.0.0.4:1", ModelOnAgent(BASE, "loading"), table=[LORA])
    agent(pool, "10.0.0.5:1", ModelOnAgent(BASE, "ready"), table=[LORA], role=WorkerRole.DECODE)
    routes = build_snapshot(pool.agents()).by_model()
    assert set(routes) == {BASE, "org/lora", "org/base:org/lora"}
    for name in LORA.names:
        route = routes[name]
        assert route.cluster == cluster_name(name)
        assert [(e.address, e.weight) for e in route.endpoints] == [
            ("10.0.0.1:1", WEIGHT_MAX),
            ("10.0.0.2:1", WEIGHT_MAX // 4),
        ]
    assert len(routes[BASE].endpoints) == 3


def test_several_adapters_on_one_base_each_get_their_routes() -> None:
    """Two adapters of one base (the snapshot once sorted Adapter objects, which do not
    order: every rebuild raised TypeError and Envoy kept relaying adapters to the proxy)."""
    second = Adapter("org/lora-b", BASE, "v1")
    pool = WorkerPool()
    agent(pool, "10.0.0.1:1", ModelOnAgent(BASE, "ready"), table=[second, LORA])
    routes = build_snapshot(pool.agents()).by_model()
    assert set(routes) == {BASE, *LORA.names, *second.names}
    assert [r.model for r in build_snapshot(pool.agents()).routes] == [
        BASE,
        *LORA.names,
        *second.names,
    ]


def test_an_adapter_whose_base_is_ready_nowhere_has_no_route() -> None:
    pool = WorkerPool()
    agent(pool, "10.0.0.1:1", ModelOnAgent(BASE, "loading"), table=[LORA])
    assert build_snapshot(pool.agents()).routes == ()


@dataclass
class RecordingConnection:
    """A worker holding the base: records the tables its heartbeats carry, the loads
    and the jobs relayed to it."""

    models: list[ModelOnAgent] = field(default_factory=list)
    tables: list[tuple[Adapter, ...] | None] = field(default_factory=list)
    loads: list[str] = field(default_factory=list)
    jobs: list[Job] = field(default_factory=list)

    async def heartbeat(
        self,
        deadline_s: float,
        prefill_pools: Mapping[str, Sequence[PrefillPeer]] | None = None,
        **kwargs: Sequence[Adapter],
    ) -> WorkerStatus:
        table = kwargs.get("adapters")
        self.tables.append(None if table is None else tuple(table))
        return WorkerStatus(
            worker_id="w",
            ready_models=tuple(m.model for m in self.models),
            known_models=tuple(m.model for m in self.models),
            healthy=True,
            models=tuple(self.models),
            memory_total=10_000,
            memory_free=5_000,
        )

    async def load_model(
        self, model: str, local_path: str, deadline_s: float | None
    ) -> AsyncIterator[str]:
        self.loads.append(model)
        self.models.append(ModelOnAgent(model, "ready"))
        yield "ready"

    async def generate(self, job: Job, deadline_s: float | None) -> AsyncIterator[Step]:
        self.jobs.append(job)
        yield Step("adapted", 3, 1, "stop")


async def test_heartbeats_hand_the_table_only_when_the_registry_has_adapters() -> None:
    worker = RecordingConnection([ModelOnAgent(BASE, "ready")])
    pool = WorkerPool(["w:1"])
    registry = catalogue()
    await registry.refresh()
    beats = Heartbeats(pool, lambda _: worker, registry=registry)  # type: ignore[arg-type,return-value]
    await beats.beat("w:1")  # the first: the proxy does not know yet what "w:1" holds
    await beats.beat("w:1")
    assert worker.tables == [(), (LORA,)]
    assert pool.view("w:1").adapter_table == (LORA,)
    plain = catalogue({BASE: MODELS[BASE]})
    await plain.refresh()
    beats = Heartbeats(pool, lambda _: worker, registry=plain)  # type: ignore[arg-type,return-value]
    await beats.beat("w:1")
    assert worker.tables[-1] is None
    assert pool.view("w:1").adapter_table == ()


def job(model: str) -> Job:
    sampling = Sampling(max_tokens=4, temperature=0.0, top_p=1.0, top_k=0, seed=None, stop=())
    return Job("r1", model, sampling, int(time.time()), prompt="hi")


async def test_a_cold_adapter_request_loads_the_base_and_is_relayed_as_the_pair() -> None:
    worker = RecordingConnection()
    pool = WorkerPool(["w:1"])
    pool.record_heartbeat(
        "w:1", worker_id="w", healthy=True, memory_total=10_000, memory_free=10_000
    )
    cold = ColdStarts(
        pool,
        {"w:1": worker},  # type: ignore[dict-item]
        (),
        MemoryEstimator(None),
        registry=catalogue(),
    )
    path = ColdPath(cold, {"w:1": worker})  # type: ignore[dict-item]
    step = await path.complete(job("org/lora"), RequestContext(deadline_s=10))
    assert step.text == "adapted"
    assert worker.loads == [BASE]  # the base, never the adapter
    assert [j.model for j in worker.jobs] == ["org/base:org/lora"]
    # The base warm now: the next one goes straight to it, by either name.
    await path.complete(job("org/base:org/lora"), RequestContext(deadline_s=10))
    assert worker.loads == [BASE]
    assert [j.model for j in worker.jobs][-1] == "org/base:org/lora"
    with pytest.raises(InvalidArgumentError):
        await path.complete(job("org/other:org/lora"), RequestContext(deadline_s=10))
    # An adapter is never placed as a model of its own (prefetch hints, admin loads).
    assert await cold.adopt("org/lora") is None
    # /v1/models lists it with its parent, warm where the base is.
    listed = {m.id: m for m in await ColdPathBackend(path).list_models()}
    assert (listed["org/lora"].parent, listed["org/lora"].warm_status) == (BASE, "warm")
    assert listed["org/lora"].memory_bytes == 10  # its own files
    assert (listed[BASE].parent, listed["org/other-lora"].warm_status) == ("", "cold")
