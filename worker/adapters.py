"""LoRA adapters on a worker: which model a request's model id runs on, and the adapter's
files. Domain only (no protobuf).

An adapter is a registry model with a base. A request names it as ``<base>:<adapter>``
or by the adapter's id alone; the control plane's heartbeats hand the worker its
adapter table (adapter -> base and version, for the models it holds), which is what
makes the id alone enough. Either way the request runs on the base's engine, which must
be READY here, with the adapter applied (worker.engine: several adapters per base,
each loaded at its first request). The adapter's files come through storaged like a
model's (EnsureModel), once per adapter version; requests for one adapter arriving
together share that fetch.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from runtime.errors import FailedPreconditionError, InvalidArgumentError
from worker.engine.base import AdapterRef, EngineClient, GenerationRequest
from worker.storage_client import DownloadProgress

__all__ = ["AdapterSpec", "AdapterStore", "Target", "split_adapter_model", "with_adapter"]

FetchFiles = Callable[[str, str], AsyncIterator[DownloadProgress]]
"""storaged's EnsureModel: makes (model, version) local; the last report has local_dir."""

# Separates the base from the adapter in a model id: registry ids never contain it.
SEPARATOR = ":"


@dataclass(frozen=True)
class AdapterSpec:
    """One adapter of the table: its registry id, its base's, and the version to serve
    ("" the latest)."""

    adapter: str
    base: str
    version: str = ""


@dataclass(frozen=True)
class Target:
    """What a request's model id runs on here: the loaded model (its engine, admission
    queue and usage figures) and the adapter to apply (None: the model alone)."""

    model: str
    adapter: AdapterSpec | None = None


def split_adapter_model(model: str) -> tuple[str, str] | None:
    """``<base>:<adapter>`` -> (base, adapter); None for any other id. The adapter is a
    registry id (no colon), so the last colon separates them."""
    base, sep, adapter = model.rpartition(SEPARATOR)
    if not sep or not base or not adapter:
        return None
    return base, adapter


def with_adapter(
    engine: EngineClient, request: GenerationRequest, adapter: AdapterRef | None
) -> GenerationRequest:
    """``request`` with ``adapter`` applied, when ``engine`` runs adapters."""
    if adapter is None:
        return request
    if not engine.supports_adapters:
        raise FailedPreconditionError(
            f"model {engine.model_name} serves no LoRA adapters on this worker (its"
            f" engine has them off); adapter {adapter.adapter_id} cannot run on it"
        )
    return replace(request, adapter=adapter)


class AdapterStore:
    """The worker's adapter table and the local files of the adapters it served."""

    def __init__(self, fetch: FetchFiles | None = None) -> None:
        """``fetch``: storaged's EnsureModel (None: this worker has no storaged, and
        serves no adapters)."""
        self._fetch = fetch
        self._table: dict[str, AdapterSpec] = {}
        self._files: dict[tuple[str, str], Path] = {}
        self._fetches: dict[tuple[str, str], asyncio.Task[Path]] = {}

    def update(self, specs: Iterable[AdapterSpec]) -> None:
        """Replace the table with what the control plane says now."""
        self._table = {s.adapter: s for s in specs}

    def spec(self, adapter: str) -> AdapterSpec | None:
        return self._table.get(adapter)

    def target(self, model: str, loaded: Callable[[str], bool]) -> Target:
        """Where a request for ``model`` runs: a model ``loaded`` here is itself; an
        adapter (``<base>:<adapter>``, or an id the table knows) runs on its base."""
        if loaded(model):
            return Target(model)
        pair = split_adapter_model(model)
        if pair is not None:
            base, adapter = pair
            known = self._table.get(adapter)
            if known is not None and known.base != base:
                raise InvalidArgumentError(
                    f"model: {adapter} is a LoRA adapter of {known.base}, not of {base}"
                )
            return Target(base, known or AdapterSpec(adapter, base))
        known = self._table.get(model)
        if known is not None:
            return Target(known.base, known)
        return Target(model)

    async def ref(self, spec: AdapterSpec | None) -> AdapterRef | None:
        """The engine's reference to ``spec``'s files, fetched through storaged the first
        time (once for every request waiting for them)."""
        if spec is None:
            return None
        key = (spec.adapter, spec.version)
        path = self._files.get(key)
        if path is None:
            task = self._fetches.get(key)
            if task is None:
                task = asyncio.ensure_future(self._fetch_files(spec))
                self._fetches[key] = task
            # A request that gives up does not cancel the fetch the others wait for.
            path = await asyncio.shield(task)
        return AdapterRef(spec.adapter, path, spec.version)

    async def _fetch_files(self, spec: AdapterSpec) -> Path:
        key = (spec.adapter, spec.version)
        try:
            if self._fetch is None:
                raise FailedPreconditionError(
                    f"adapter {spec.adapter}: this worker has no storaged (--storaged) to"
                    " fetch adapters from"
                )
            local_dir = ""
            async for step in self._fetch(spec.adapter, spec.version):
                local_dir = step.local_dir or local_dir
            if not local_dir:
                raise FailedPreconditionError(
                    f"the model store never made adapter {spec.adapter} local"
                )
            self._files[key] = Path(local_dir)
            return self._files[key]
        finally:
            self._fetches.pop(key, None)
