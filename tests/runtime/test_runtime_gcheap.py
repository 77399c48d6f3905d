"""runtime.gcheap: survivors are frozen out of the collector's scans, and thawed again."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from runtime.gcheap import freeze_long_lived, thaw_long_lived


@pytest.fixture(autouse=True)
def thawed() -> Iterator[None]:
    thaw_long_lived()
    yield
    thaw_long_lived()


def test_freeze_moves_survivors_out_of_collection_and_thaw_brings_them_back() -> None:
    survivor: list[object] = []
    survivor.append(survivor)  # a reference cycle that is still alive
    before = gc.get_freeze_count()
    freeze_long_lived()
    assert gc.get_freeze_count() > before
    assert gc.is_tracked(survivor)
    thaw_long_lived()
    assert gc.get_freeze_count() == 0


def test_garbage_is_collected_before_freezing() -> None:
    class Node:
        def __init__(self) -> None:
            self.me = self

    collected: list[str] = []
    import weakref

    node = Node()
    weakref.finalize(node, collected.append, "gone")
    del node  # a cycle: only the collector frees it
    freeze_long_lived()
    assert collected == ["gone"]  # collected, not frozen forever
