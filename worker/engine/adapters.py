"""LoRA adapters on the reference engine, with peft.

Several adapters sit on one model at once (peft's named adapters: each targeted linear
layer gets a LoRA pair per adapter, the base weights are never touched), and every
forward step says which one it runs with. The engine runs each request's steps in a
thread of its own and several requests at once, so the choice cannot be peft's global
"active adapter": it is a per-thread setting (:meth:`LoraAdapters.run`) that a forward
pre-hook on every LoRA layer passes to peft as ``adapter_names`` (peft's mixed-batch
inference: the named adapter's LoRA pair for that step, ``__base__`` for none). So
requests of different adapters, and of the model alone, run side by side, each with its
own adapter, without any batching or serialising between them.

Loading or dropping an adapter changes the model's modules, which must not happen
under a running step: forward steps hold a shared lock, a load the exclusive one (for
the milliseconds peft takes to add the LoRA pairs and read their weights), on a thread
of its own so that it never waits behind the steps it waits for. Each adapter is loaded
once (concurrent first requests share the load) and kept for the requests after; at
most ``max_adapters`` stay loaded, the least recently used one with no request running
leaves for a new one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from runtime.errors import (
    HeliosError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
)
from worker.engine.base import AdapterRef

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["DEFAULT_MAX_ADAPTERS", "LoraAdapters", "read_adapter_config"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_ADAPTERS = 8
# peft's name for "no adapter" in a mixed batch.
_BASE = "__base__"
# peft warns when the adapter it considered active is deleted; no adapter is active in
# the sense it means (every step names its own), so the warning says nothing here.
warnings.filterwarnings("ignore", message=r"Adapter .* was active which is now deleted")

_T = TypeVar("_T")


def read_adapter_config(path: Path, adapter_id: str) -> dict[str, Any]:
    """``path``'s adapter_config.json, checked to be a LoRA adapter this engine runs:
    NotFoundError when there is none, InvalidArgumentError for another kind of adapter
    (prompt tuning, IA3...), DoRA or fully trained extra modules."""
    try:
        config = json.loads((path / "adapter_config.json").read_text())
    except FileNotFoundError:
        raise NotFoundError(
            f"adapter {adapter_id}: {path} has no adapter_config.json (not a peft adapter)"
        ) from None
    except (OSError, ValueError) as exc:
        raise InvalidArgumentError(
            f"adapter {adapter_id}: adapter_config.json cannot be read: {exc}"
        ) from exc
    if not isinstance(config, dict):
        raise InvalidArgumentError(f"adapter {adapter_id}: adapter_config.json is not an object")
    kind = config.get("peft_type")
    if kind != "LORA":
        raise InvalidArgumentError(
            f"adapter {adapter_id} is a {kind} adapter; only LoRA adapters are served"
        )
    if config.get("use_dora"):
        raise InvalidArgumentError(f"adapter {adapter_id} uses DoRA, which is not served")
    if config.get("modules_to_save"):
        raise InvalidArgumentError(
            f"adapter {adapter_id} trains whole modules ({config['modules_to_save']});"
            " only LoRA layers are served"
        )
    return config


class _SharedLock:
    """Many holders of the shared side (forward steps) or one of the exclusive side
    (changing the modules); a waiting exclusive holder lets no new shared one in."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting = 0

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive or self._waiting:
                self._cond.wait()
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                if not self._shared:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            while self._exclusive or self._shared:
                self._cond.wait()
            self._waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


@dataclass
class _Loaded:
    """One adapter in the model: peft's name for it and the requests running with it."""

    ref: AdapterRef
    peft_name: str
    users: int = 0


class LoraAdapters:
    """The LoRA adapters loaded into one model (see the module's docstring)."""

    def __init__(
        self, model: PreTrainedModel, model_name: str, *, max_adapters: int = DEFAULT_MAX_ADAPTERS
    ) -> None:
        if max_adapters < 1:
            raise InvalidArgumentError(f"max_adapters must be >= 1, got {max_adapters}")
        self._model = model
        self._model_name = model_name
        self._max = max_adapters
        self._lock = _SharedLock()
        self._current = threading.local()
        # By AdapterRef.key, least recently used first.
        self._loaded: OrderedDict[str, _Loaded] = OrderedDict()
        self._loads: dict[str, asyncio.Task[_Loaded]] = {}
        self._load_lock = asyncio.Lock()
        self._peft: Any = None  # the PeftModel wrapping the model once an adapter came
        self._hooked: set[int] = set()  # ids of the LoRA layers given the hook
        self._counter = 0
        # Loads wait for running steps to end: never on a thread those steps may need.
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"adapters-{model_name}"
        )

    def ids(self) -> tuple[str, ...]:
        """The adapter ids loaded now."""
        return tuple(sorted({a.ref.adapter_id for a in self._loaded.values()}))

    async def acquire(self, ref: AdapterRef | None) -> str | None:
        """peft's name of ``ref``, loaded first when it is not yet, and held (not
        unloaded) until :meth:`release`; None for the model alone."""
        if ref is None:
            return None
        while True:
            loaded = self._loaded.get(ref.key)
            if loaded is not None:
                loaded.users += 1
                self._loaded.move_to_end(ref.key)
                return loaded.peft_name
            task = self._loads.get(ref.key)
            if task is None:
                task = asyncio.ensure_future(self._load(ref))
                self._loads[ref.key] = task
            # A first request that gives up does not cancel the load the others share.
            await asyncio.shield(task)

    def release(self, ref: AdapterRef | None) -> None:
        """A request that :meth:`acquire` d ``ref`` is done with it."""
        loaded = self._loaded.get(ref.key) if ref is not None else None
        if loaded is not None:
            loaded.users -= 1

    def run(self, peft_name: str | None, fn: Callable[..., _T], *args: Any) -> _T:
        """``fn(*args)`` (a forward step, on the calling thread) with adapter
        ``peft_name`` (None: the model alone)."""
        with self._lock.shared():
            self._current.name = peft_name or _BASE
            try:
                return fn(*args)
            finally:
                self._current.name = _BASE

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._loaded.clear()
        self._peft = None

    async def _load(self, ref: AdapterRef) -> _Loaded:
        """Load ``ref``, one load at a time (each may have to make room)."""
        try:
            return await self._load_one(ref)
        finally:
            self._loads.pop(ref.key, None)

    async def _load_one(self, ref: AdapterRef) -> _Loaded:
        async with self._load_lock:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(
                self._executor, read_adapter_config, ref.path, ref.adapter_id
            )
            victim = self._make_room()
            self._counter += 1
            peft_name = f"lora{self._counter}"
            try:
                await loop.run_in_executor(
                    self._executor, self._inject, ref.path, peft_name, victim
                )
            except HeliosError:
                raise
            except Exception as exc:
                # Target modules the model lacks, shapes of another base's layers: the
                # adapter does not fit this model.
                raise InvalidArgumentError(
                    f"adapter {ref.adapter_id} cannot be applied to {self._model_name}:"
                    f" {type(exc).__name__}: {exc}"
                ) from exc
            loaded = _Loaded(ref, peft_name)
            self._loaded[ref.key] = loaded
            logger.info("adapter loaded", extra={"model": self._model_name, "adapter": ref.key})
            return loaded

    def _make_room(self) -> str | None:
        """peft's name of the adapter to drop for one more (None: there is room), taken
        out of the loaded ones at once so that no request starts with it meanwhile."""
        if len(self._loaded) < self._max:
            return None
        for key, loaded in self._loaded.items():  # least recently used first
            if loaded.users == 0:
                del self._loaded[key]
                logger.info("adapter unloaded", extra={"model": self._model_name, "adapter": key})
                return loaded.peft_name
        raise ResourceExhaustedError(
            f"model {self._model_name} runs requests with {len(self._loaded)} adapters"
            f" already (at most {self._max} at once); retry when one is done"
        )

    def _inject(self, path: Path, peft_name: str, victim: str | None) -> None:
        """Add the adapter at ``path`` as ``peft_name`` (dropping adapter ``victim``'s
        LoRA pairs first), and hook the LoRA layers new to the model (runs on the loader's
        thread)."""
        from peft import PeftModel
        from peft.tuners.lora import LoraLayer

        with self._lock.exclusive():
            if victim is not None and self._peft is not None:
                self._peft.delete_adapter(victim)
            if self._peft is None:
                self._peft = PeftModel.from_pretrained(
                    self._model, str(path), adapter_name=peft_name, is_trainable=False
                )
            else:
                self._peft.load_adapter(str(path), adapter_name=peft_name, is_trainable=False)
            self._model.eval()
            for module in self._model.modules():
                if isinstance(module, LoraLayer) and id(module) not in self._hooked:
                    module.register_forward_pre_hook(self._name_adapter, with_kwargs=True)
                    self._hooked.add(id(module))

    def _name_adapter(
        self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Forward pre-hook of each LoRA layer: this thread's adapter for every row."""
        name = getattr(self._current, "name", _BASE)
        kwargs["adapter_names"] = [name] * int(args[0].shape[0])
        return args, kwargs
