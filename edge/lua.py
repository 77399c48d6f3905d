"""The Lua filter's source (edge/helios_edge.lua), rendered for the bootstrap.

The names the Lua shares with Python are not spelled in the Lua: each is a placeholder
string ``"@NAME@"`` there, replaced here by the Lua literal of its one Python definition
(openai_compat/protocol.py, runtime/edge_names.py, runtime/limits.py,
edge/names.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from edge.names import EMBEDDINGS_REST_PATH
from openai_compat.protocol import EDGE_HEADER
from runtime.edge_names import CLIENT_HEADER, MODEL_HEADER, PREFIX_HASH_HEADER
from runtime.limits import MAX_ID_BYTES

LUA_FILTER_PATH = Path(__file__).resolve().with_name("helios_edge.lua")

LuaValue = bool | int | str
_PLACEHOLDER = re.compile(r'"@([A-Z][A-Z0-9_]*)@"')


def lua_values() -> dict[str, LuaValue]:
    """Each placeholder of the Lua source and its value."""
    return {
        "EDGE_HEADER": EDGE_HEADER,
        "CLIENT_HEADER": CLIENT_HEADER,
        "MODEL_HEADER": MODEL_HEADER,
        "PREFIX_HASH_HEADER": PREFIX_HASH_HEADER,
        # Longer model ids are not routed by header: the proxy refuses them anyway.
        "MAX_ID_BYTES": MAX_ID_BYTES,
        "EMBEDDINGS_PATH": EMBEDDINGS_REST_PATH,
    }


def lua_literal(value: LuaValue) -> str:
    """``value`` as a Lua literal; strings must be printable ASCII."""
    if isinstance(value, bool):  # before int: a bool is an int
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if not value.isascii() or not value.isprintable():
        raise ValueError(f"not a printable ASCII string for Lua: {value!r}")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_lua(source: str, values: Mapping[str, LuaValue]) -> str:
    """``source`` with every ``"@NAME@"`` replaced by ``values[NAME]``'s literal; the
    placeholders and the values must name the same set."""
    found = set(_PLACEHOLDER.findall(source))
    if found != set(values):
        raise ValueError(
            f"the Lua source's placeholders {sorted(found)} are not the values given "
            f"{sorted(values)}"
        )
    return _PLACEHOLDER.sub(lambda match: lua_literal(values[match.group(1)]), source)


def load_lua_filter() -> str:
    """The Lua filter as Envoy runs it."""
    source = LUA_FILTER_PATH.read_text(encoding="utf-8")
    return render_lua(source, lua_values())
