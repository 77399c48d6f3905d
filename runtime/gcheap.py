"""Keep Python's cyclic garbage collector off a serving process's long-lived heap.

A worker holds millions of objects that live as long as the process (torch, vLLM and
transformers modules, a loaded model's Python objects). Every full collection walks them
all, and token streaming allocates fast enough to trigger one every few seconds: each is
a pause of hundreds of milliseconds in which no token moves (seen as streams arriving in
one burst after a stall). vLLM's own server avoids this the same way: after start-up (and
after each model load) the survivors are collected once and frozen into the permanent
generation, which the collector never scans. Before a model is unloaded the heap is
thawed, so that the model's reference cycles can still be collected.
"""

from __future__ import annotations

import atexit
import gc
import logging
import time

__all__ = ["freeze_long_lived", "thaw_long_lived"]

log = logging.getLogger(__name__)

_thaw_at_exit_registered = False


def freeze_long_lived() -> None:
    """Collect what is garbage now, then exempt every surviving object from future
    collections (call after start-up and after a model load)."""
    global _thaw_at_exit_registered
    if not _thaw_at_exit_registered:
        # Frozen objects are skipped by the interpreter's final clean-up too; native
        # extensions then report them as leaked. Thaw first.
        atexit.register(thaw_long_lived)
        _thaw_at_exit_registered = True
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    log.debug(
        "gc heap frozen",
        extra={"frozen": gc.get_freeze_count(), "seconds": round(time.perf_counter() - started, 3)},
    )


def thaw_long_lived() -> None:
    """Make frozen objects collectable again (before dropping a large object graph)."""
    gc.unfreeze()
