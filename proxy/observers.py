"""Word of a change, for whoever asked: the fleet's and the dependencies' observers."""

from __future__ import annotations

from collections.abc import Callable

Observer = Callable[[], None]


class Observers:
    """Callbacks run synchronously, in order, on every :meth:`notify` (they must be cheap
    and must not block: schedule work on the loop)."""

    def __init__(self) -> None:
        self._observers: list[Observer] = []

    def subscribe(self, observer: Observer) -> Callable[[], None]:
        """Add ``observer``; returns the function that removes it (safe to call twice)."""
        self._observers.append(observer)

        def unsubscribe() -> None:
            if observer in self._observers:
                self._observers.remove(observer)

        return unsubscribe

    def notify(self) -> None:
        for observer in list(self._observers):
            observer()
