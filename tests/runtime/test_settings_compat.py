"""Typed settings (issue 18) change nothing an operator sees: every service's ``--help``,
the environment variables its parser reads, and what each of them sets are the same as
before the change.

``settings_golden.json`` was captured from the hand-wired parsers (commit 571d988, before
runtime/settings.py) by running this file as a script against that tree::

    git archive 571d988 | tar -x -C /tmp/head
    PYTHONPATH=/tmp/head .venv/bin/python tests/runtime/test_settings_compat.py > golden.json

Deliberate differences in what is captured here are listed in ``CHANGED`` below (none).
Flags added since were added to the file by running the script again, with nothing else
changing in it: the worker's ``--vllm-processes`` and ``--load-format`` (issue 14) and
``--serving-cpus`` and ``--rest-port`` (issue 13); the proxy's ``--heartbeat-interval``
help (a heartbeat also when a worker's connection drops, issue 13), the worker's
``--rest-socket`` and the proxy's ``--xds-local-sockets`` (issue 13), the worker's
``--serving-cpus`` help (the engine core's main thread on its runners' cores, issue 13).
Deliberate differences in what happens after parsing (stricter, and not visible here):

- a variable outside its flag's choices (argparse checks only the command line) is a
  ConfigError naming the field: ``HELIOS_PROXY_DISCOVERY=consul`` ran static discovery;
- boolean variables take 1/true/yes/on and 0/false/no/off in any case, anything else is a
  ConfigError: ``HELIOS_WORKER_ENABLE_PREFIX_CACHING=1`` meant false, ``..._S3_CREATE_BUCKET=TRUE``
  false;
- a bad number in a service's own variable fails as its flag does (it was a ValueError
  traceback while the parser was built); argparse says "expected an integer/a number"
  for every flag, not "invalid int value";
- empty items of repeatable flags and list variables are skipped for every service
  (the estimator's ``a,,b`` added the current directory as a root);
- the proxy checks ``--k8s-resync`` and ``--k8s-pool`` in static mode too; each
  cross-field error names a real field (xds_upstream_tls_key, api_key, api_keys_file).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

GOLDEN = Path(__file__).with_name("settings_golden.json")
SERVICES = ("proxy", "worker", "registry", "storaged", "estimator")
# What each read variable is set to in turn until the parser accepts it and some value
# changes: booleans first (so they are seen turning off), then a number (every int, float
# and string field takes it), then one choice of each choice-valued flag.
CANDIDATES = (
    "true",
    "false",
    "7",
    "kubernetes",
    "prefix-aware",
    "vllm",
    "decode",
    "full",
    "s3",
    "path",
)
# The environment the parsers are built in: nothing of the developer's leaks in.
BASE_ENV = {"HOME": "/home/helios", "COLUMNS": "100", "LINES": "50"}


class RecordingEnviron(dict[str, str]):
    """``os.environ`` that remembers every name looked up."""

    def __init__(self, values: dict[str, str]) -> None:
        super().__init__(values)
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.read.add(str(key))
        return super().__contains__(key)


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Any:
    saved = os.environ
    env = RecordingEnviron({**BASE_ENV, **values})
    # The mapping itself is swapped (not its contents changed): os.getenv and every
    # os.environ.get then read the recording one, and nothing reaches child processes.
    setattr(os, "environ", env)  # noqa: B010
    try:
        yield env
    finally:
        setattr(os, "environ", saved)  # noqa: B010


def _parse(service: str, env: dict[str, str]) -> tuple[dict[str, Any] | None, set[str]]:
    """The parsed defaults (None when the parser refuses them) and the variables read."""
    module = importlib.import_module(f"{service}.server")
    with _environ(env) as recorded, contextlib.redirect_stderr(io.StringIO()):
        try:
            namespace = module.build_parser().parse_args([])
        except (SystemExit, ValueError, argparse.ArgumentTypeError):
            return None, recorded.read
    return vars(namespace), recorded.read


def _help(service: str) -> str:
    module = importlib.import_module(f"{service}.server")
    with _environ({}):
        text: str = module.build_parser().format_help()
    return text


def snapshot(service: str) -> dict[str, Any]:
    """``--help``, the variables read, and for each the first candidate value that
    changes the parsed settings, with what it changes (``repr`` of the new values)."""
    base, read = _parse(service, {})
    assert base is not None
    effects: dict[str, Any] = {}
    for name in sorted(read - set(BASE_ENV)):
        effects[name] = None
        for value in CANDIDATES:
            parsed, _ = _parse(service, {name: value})
            if parsed is None:
                continue
            changes = {k: repr(v) for k, v in parsed.items() if base.get(k) != v}
            if changes:
                effects[name] = {"value": value, "changes": changes}
                break
    return {"help": _help(service), "env_read": sorted(read), "env_effects": effects}


# Deliberate differences from the captured parsers: service -> env name -> (the effect now,
# why). Empty: none so far.
CHANGED: dict[str, dict[str, tuple[Any, str]]] = {}


@pytest.mark.parametrize("service", SERVICES)
def test_help_is_unchanged(service: str) -> None:
    assert _help(service) == json.loads(GOLDEN.read_text())[service]["help"]


@pytest.mark.parametrize("service", SERVICES)
def test_every_env_name_is_read_and_sets_what_it_did(service: str) -> None:
    golden = json.loads(GOLDEN.read_text())[service]
    now = snapshot(service)
    assert now["env_read"] == golden["env_read"]
    expected = dict(golden["env_effects"])
    for name, (effect, _why) in CHANGED.get(service, {}).items():
        expected[name] = effect
    assert now["env_effects"] == expected


if __name__ == "__main__":
    json.dump({s: snapshot(s) for s in SERVICES}, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
