"""The Lua filter's shared names come from their one Python definition at render time."""

from __future__ import annotations

import re

import pytest

from edge.lua import LUA_FILTER_PATH, load_lua_filter, lua_literal, lua_values, render_lua
from edge.names import EMBEDDINGS_REST_PATH
from openai_compat.protocol import EDGE_HEADER
from runtime.edge_names import CLIENT_HEADER, MODEL_HEADER, PREFIX_HASH_HEADER
from runtime.limits import MAX_ID_BYTES


def test_the_rendered_filter_spells_each_shared_name_from_python() -> None:
    lua = load_lua_filter()
    assert f'local EDGE_HEADER = "{EDGE_HEADER}"\n' in lua
    assert f'local CLIENT_HEADER = "{CLIENT_HEADER}"\n' in lua
    assert f'local MODEL_HEADER = "{MODEL_HEADER}"\n' in lua
    assert f'local PREFIX_HASH_HEADER = "{PREFIX_HASH_HEADER}"\n' in lua
    assert f"local MAX_MODEL_HEADER = {MAX_ID_BYTES}\n" in lua
    assert f'  ["{EMBEDDINGS_REST_PATH}"] = true,\n' in lua
    assert '"@' not in lua


def test_the_lua_source_defines_no_shared_value_itself() -> None:
    """Outside comments, no shared name's value is spelled in the Lua: a second
    definition would drift from Python's."""
    code = [
        line
        for line in LUA_FILTER_PATH.read_text(encoding="utf-8").splitlines()
        if not line.lstrip().startswith("--")
    ]
    for value in lua_values().values():
        if isinstance(value, str):
            assert not [line for line in code if value in line], value
    assert set(re.findall(r'"@([A-Z_]+)@"', "\n".join(code))) == set(lua_values())


def test_placeholders_and_values_must_match() -> None:
    source = 'local A = "@A@"\nlocal B = "@B@"\n'
    assert render_lua(source, {"A": "x", "B": 3}) == 'local A = "x"\nlocal B = 3\n'
    with pytest.raises(ValueError, match="placeholders"):
        render_lua(source, {"A": "x"})  # B left unfilled
    with pytest.raises(ValueError, match="placeholders"):
        render_lua(source, {"A": "x", "B": 3, "C": True})  # C is not in the source


def test_lua_literals() -> None:
    assert lua_literal(True) == "true"
    assert lua_literal(False) == "false"
    assert lua_literal(256) == "256"
    assert lua_literal('a"b\\c') == '"a\\"b\\\\c"'
    for bad in ("line\nbreak", "caf\u00e9"):
        with pytest.raises(ValueError, match="printable ASCII"):
            lua_literal(bad)
