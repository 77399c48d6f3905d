"""LoRA adapters in the control plane (domain only).

An adapter is a registry model with a base (``RegistryModel.base``). Clients name it by
its id or as ``<base>:<adapter>``; either runs on a worker with the base READY, which
loads the adapter at its first request (worker/adapters.py). The control plane

* hands every worker, with each heartbeat, the adapters of the models it holds
  (:func:`adapter_table`): that table is what lets a worker serve an adapter's id;
* routes both names of an adapter (an Envoy cluster each, :mod:`proxy.xds_snapshot`) to
  the workers with the base READY that have that table (so a request never reaches a
  worker that cannot tell the adapter's base yet), the workers that already hold the
  adapter weighted above those that would load it first;
* serves the rest on the cold path: an adapter whose base is READY nowhere loads the
  base (:func:`resolve_adapter` says which), then the request is relayed as
  ``<base>:<adapter>``, a form any worker with the base serves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from proxy.registry import RegistryCatalogue, RegistryModel
from runtime.errors import InvalidArgumentError, NotFoundError

__all__ = ["Adapter", "adapter_table", "find_adapter", "resolve_adapter", "split_adapter_model"]

SEPARATOR = ":"
# How much less a worker that would load the adapter first weighs in the adapter's
# cluster than one that holds it (Envoy's weights: a holder takes about this many times
# the requests, while a loaded holder still leaves room to the others).
NON_HOLDER_WEIGHT_DIVISOR = 4


@dataclass(frozen=True)
class Adapter:
    """A LoRA adapter: its registry id, its base's, and its latest version."""

    adapter: str
    base: str
    version: str = ""

    @property
    def pair(self) -> str:
        """The ``<base>:<adapter>`` name (the one the cold path relays)."""
        return f"{self.base}{SEPARATOR}{self.adapter}"

    @property
    def names(self) -> tuple[str, str]:
        """Both names a client may use: the adapter's id and the pair."""
        return self.adapter, self.pair


def split_adapter_model(model: str) -> tuple[str, str] | None:
    """``<base>:<adapter>`` -> (base, adapter); None for any other id (registry ids
    have no colon, so the last one separates them)."""
    base, sep, adapter = model.rpartition(SEPARATOR)
    if not sep or not base or not adapter:
        return None
    return base, adapter


def adapters_of(models: Mapping[str, RegistryModel]) -> dict[str, Adapter]:
    """The adapters among the registry's models, by id."""
    return {m.model_id: Adapter(m.model_id, m.base, m.version) for m in models.values() if m.base}


def adapter_table(
    models: Mapping[str, RegistryModel], held: Iterable[str]
) -> tuple[Adapter, ...] | None:
    """What a heartbeat hands a worker holding the models ``held``: the adapters of
    those models, by id. None when the registry has no adapter at all (the heartbeat
    then carries no table)."""
    adapters = adapters_of(models)
    if not adapters:
        return None
    bases = set(held)
    return tuple(a for _, a in sorted(adapters.items()) if a.base in bases)


def resolve_adapter(model: str, found: RegistryModel | None, pair: bool) -> Adapter | None:
    """The adapter a request's ``model`` names, given what the registry says of the
    adapter's id (``found``; None: nothing) and whether the client used the pair form.
    None when ``model`` names no adapter (a model, served as one)."""
    if found is None or not found.base:
        if pair:
            raise NotFoundError(f"The model `{model}` does not exist (no such LoRA adapter)")
        return None
    if pair:
        split = split_adapter_model(model)
        assert split is not None
        if split[0] != found.base:
            raise InvalidArgumentError(
                f"model: {found.model_id} is a LoRA adapter of {found.base}, not of {split[0]}"
            )
    return Adapter(found.model_id, found.base, found.version)


async def find_adapter(
    model: str, registry: RegistryCatalogue | None, known: Callable[[str], bool]
) -> Adapter | None:
    """The adapter a cold request's ``model`` names, asking the registry (None: a
    model; ``known`` models, those in the catalogue or on an agent, are not looked up)."""
    if registry is None or known(model):
        return None
    pair = split_adapter_model(model)
    found = await registry.lookup(pair[1] if pair is not None else model)
    return resolve_adapter(model, found, pair is not None)
