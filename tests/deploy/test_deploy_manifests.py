"""deploy/: every overlay renders and validates offline; the manifests keep the promises
the README makes (least-privilege RBAC, gRPC probes, resources, GPU placement)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = sorted(p.name for p in (ROOT / "deploy" / "overlays").iterdir() if p.is_dir())
VENV_BIN = Path(sys.executable).parent

needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")


def render(overlay: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / "deploy" / "overlays" / overlay)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_specs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        f"{d['kind']}/{d['metadata']['name']}": d["spec"]["template"]["spec"]
        for d in docs
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet")
    }


@needs_kubectl
def test_deploy_validate_script_passes() -> None:
    result = subprocess.run(
        [str(ROOT / "tools" / "validate_deploy.sh")],
        capture_output=True,
        text=True,
        env={"PATH": f"{VENV_BIN}:/usr/bin:/bin", "PYTHON": sys.executable},
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for overlay in ("dev", "gpu", "gpu-mig"):
        assert f"== overlay {overlay}" in result.stdout


def test_deploy_crd_validator_rejects_wrong_fields_and_types(tmp_path: Path) -> None:
    good = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "x"},
        "spec": {"host": "x", "trafficPolicy": {"connectionPool": {"tcp": {"maxConnections": 5}}}},
    }
    cases = {
        "good": good,
        "unknown_field": {**good, "spec": {**good["spec"], "hots": "x"}},
        "wrong_type": {
            **good,
            "spec": {
                "host": "x",
                "trafficPolicy": {"connectionPool": {"tcp": {"maxConnections": "many"}}},
            },
        },
        "bad_enum": {
            "apiVersion": "security.istio.io/v1",
            "kind": "PeerAuthentication",
            "metadata": {"name": "d"},
            "spec": {"mtls": {"mode": "STRICTEST"}},
        },
        "bad_duration": {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "ServiceMonitor",
            "metadata": {"name": "m"},
            "spec": {"selector": {}, "endpoints": [{"port": "m", "interval": "15 seconds"}]},
        },
        "no_schema": {
            "apiVersion": "example.com/v1",
            "kind": "Gadget",
            "metadata": {"name": "g"},
            "spec": {},
        },
    }
    results = {}
    for name, doc in cases.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(doc))
        results[name] = subprocess.run(
            [sys.executable, str(ROOT / "deploy" / "schemas" / "validate_crds.py"), str(path)],
            capture_output=True,
            text=True,
        )
    assert results.pop("good").returncode == 0
    for name, result in results.items():
        assert result.returncode == 1, name
        assert "ERROR" in result.stderr, name
    assert "hots" in results["unknown_field"].stderr


def test_deploy_kubernetes_validate_is_strict_offline(tmp_path: Path) -> None:
    pdb = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": "p"},
        "spec": {"maxUnavailabl": 1, "selector": {"matchLabels": {"a": "b"}}},
    }
    path = tmp_path / "pdb.yaml"
    path.write_text(yaml.safe_dump(pdb))
    result = subprocess.run(
        [str(VENV_BIN / "kubernetes-validate"), "--strict", "-k", "1.32.0", str(path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "maxUnavailabl" in result.stdout + result.stderr


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deploy_every_container_has_resources_and_grpc_probes(overlay: str) -> None:
    docs = render(overlay)
    for name, spec in pod_specs(docs).items():
        for container in spec["containers"]:
            assert container["resources"]["requests"], name
            assert container["resources"]["limits"], name
            if container["name"] != "envoy":
                assert container["readinessProbe"]["grpc"]["port"] == 50051, name
                assert container["livenessProbe"]["grpc"]["port"] == 50051, name
    pdbs = by_kind(docs, "PodDisruptionBudget")
    for name in ("helios-gateway", "helios-proxy", "helios-estimator", "helios-registry"):
        assert name in pdbs


@needs_kubectl
def test_deploy_proxy_rbac_is_least_privilege() -> None:
    docs = render("dev")
    role = by_kind(docs, "Role")["helios-proxy"]
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): set(r["verbs"]) for r in role["rules"]}
    assert rules == {
        (("discovery.k8s.io",), ("endpointslices",)): {"list", "watch"},
        (("apps",), ("deployments/scale",)): {"get", "patch"},
    }
    assert not by_kind(docs, "ClusterRole")
    binding = by_kind(docs, "RoleBinding")["helios-proxy"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "helios-proxy", "namespace": "helios"}
    ]
    # Only the proxy's pods get an API token.
    for name, spec in pod_specs(docs).items():
        if name != "Deployment/helios-proxy":
            assert spec.get("automountServiceAccountToken") is False, name


@needs_kubectl
def test_deploy_dev_has_no_gpu_and_one_model() -> None:
    docs = render("dev")
    text = yaml.safe_dump_all(docs)
    assert "nvidia.com/" not in text
    workers = {
        n: d for n, d in by_kind(docs, "Deployment").items() if n.startswith("helios-worker-")
    }
    assert list(workers) == ["helios-worker-tiny"]


@needs_kubectl
def test_deploy_gpu_pools_are_disaggregated_and_placed_by_gpu_type() -> None:
    docs = render("gpu")
    deployments = by_kind(docs, "Deployment")
    prefill = deployments["helios-worker-llama-8b-prefill"]["spec"]["template"]
    decode = deployments["helios-worker-llama-8b-decode"]["spec"]["template"]
    assert prefill["metadata"]["labels"]["helios.ai/role"] == "prefill"
    assert decode["metadata"]["labels"]["helios.ai/role"] == "decode"
    term = decode["spec"]["affinity"]["podAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ][0]
    wanted = {e["key"]: e["values"] for e in term["labelSelector"]["matchExpressions"]}
    assert wanted == {"helios.ai/model": ["llama-3.1-8b-instruct"], "helios.ai/role": ["prefill"]}
    for pool in (prefill, decode):
        container = pool["spec"]["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        expr = pool["spec"]["affinity"]["nodeAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ]["nodeSelectorTerms"][0]["matchExpressions"][0]
        assert expr["key"] == "nvidia.com/gpu.product"
    # Each pool's Service selects only its own pods (EndpointSlices feed the proxy).
    services = by_kind(docs, "Service")
    assert (
        services["helios-worker-llama-8b-decode"]["spec"]["selector"]["helios.ai/role"] == "decode"
    )
    hpas = by_kind(docs, "HorizontalPodAutoscaler")
    assert hpas["helios-worker-llama-8b-decode"]["spec"]["scaleTargetRef"]["name"] == (
        "helios-worker-llama-8b-decode"
    )
    storaged = by_kind(docs, "DaemonSet")["helios-storaged"]["spec"]["template"]["spec"]
    assert any(
        v.get("hostPath", {}).get("path") == "/mnt/nvme0/helios/nvme" for v in storaged["volumes"]
    )
    mig = by_kind(render("gpu-mig"), "Deployment")["helios-worker-qwen-0.5b"]
    limits = mig["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits.get("nvidia.com/mig-1g.10gb") == "1" and "nvidia.com/gpu" not in limits
