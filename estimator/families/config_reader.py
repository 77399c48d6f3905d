"""Typed, validated reads from a config.json mapping, and the sanity bounds they enforce.

Every error is an :class:`runtime.errors.InvalidArgumentError` naming ``config.<field>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runtime.errors import InvalidArgumentError

# Sanity bounds: a config beyond these is a typo or an attack, not a model.
MAX_DIM = 1 << 22  # 4M: hidden/intermediate/vocab sizes
MAX_LAYERS = 4096
MAX_EXPERTS = 1 << 14


class ConfigReader:
    """Typed, validated reads from a config mapping; errors name ``config.<key>``."""

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self.raw = raw

    def has(self, key: str) -> bool:
        return self.raw.get(key) is not None

    def _bad(self, key: str, what: str) -> InvalidArgumentError:
        return InvalidArgumentError(f"config.{key}: {what}, got {self.raw.get(key)!r}")

    def integer(
        self, key: str, default: int | None = None, *, minimum: int = 1, maximum: int = MAX_DIM
    ) -> int:
        value = self.raw.get(key)
        if value is None:
            if default is None:
                raise InvalidArgumentError(f"config.{key}: required for this architecture")
            return default
        # JSON through google.protobuf.Struct turns every number into a float.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._bad(key, "must be an integer")
        if isinstance(value, float):
            if not value.is_integer():
                raise self._bad(key, "must be an integer")
            value = int(value)
        if not minimum <= value <= maximum:
            raise self._bad(key, f"must be in {minimum}..{maximum}")
        return value

    def opt_int(self, key: str, *, minimum: int = 1, maximum: int = MAX_DIM) -> int | None:
        if self.raw.get(key) is None:
            return None
        return self.integer(key, minimum=minimum, maximum=maximum)

    def first_int(self, keys: tuple[str, ...], default: int | None = None, **kw: Any) -> int:
        for key in keys:
            if self.has(key):
                return self.integer(key, **kw)
        if default is None:
            raise InvalidArgumentError(f"config.{keys[0]}: required for this architecture")
        return default

    def flag(self, key: str, default: bool) -> bool:
        value = self.raw.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self._bad(key, "must be true or false")
        return value

    def int_list(self, key: str) -> list[int]:
        value = self.raw.get(key)
        if value is None:
            return []
        if not isinstance(value, list | tuple):
            raise self._bad(key, "must be a list of integers")
        out = []
        for item in value:
            if isinstance(item, bool) or not isinstance(item, int | float) or item != int(item):
                raise self._bad(key, "must be a list of integers")
            out.append(int(item))
        return out

    def str_list(self, key: str) -> list[str] | None:
        value = self.raw.get(key)
        if value is None:
            return None
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise self._bad(key, "must be a list of strings")
        return list(value)


def divide_exactly(c: ConfigReader, num_key: str, num: int, den_key: str, den: int) -> int:
    """``num / den``, or an error naming both fields when ``den`` does not divide ``num``."""
    if num % den:
        raise InvalidArgumentError(
            f"config.{num_key}: {num} is not a multiple of config.{den_key} ({den})"
        )
    return num // den
