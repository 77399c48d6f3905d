"""Render the Kubernetes gateway's Envoy config with the edge package (the same code as
`helios up`), with Kubernetes Service DNS names as upstreams: the bootstrap (its routes
and per-model clusters come from the proxy's ADS), the descriptor set, and the edge's
virtual host that the proxy serves as its base routes (--edge-routes).

The gateway has no API keys baked in: the OpenAI API is open at the gateway (put keys in
front with your ingress, or render with keys into a Secret-backed file of your own) and
the admin API is closed there (use `kubectl port-forward` to the proxy for admin calls).

    python tools/render_k8s_envoy.py           # rewrite deploy/base/envoy/*
    python tools/render_k8s_envoy.py --check   # exit 1 if the committed files are stale
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "gen"))

from edge import (  # noqa: E402
    EdgeAccess,
    Upstream,
    build_descriptor_set,
    edge_virtual_host,
    render_envoy_config,
    write_edge_routes,
)

OUT_DIR = REPO_ROOT / "deploy" / "base" / "envoy"
NAMESPACE = "helios"
GRPC_PORT = 50051
METRICS_PORT = 9090
LISTEN_PORT = 8080
ADMIN_PORT = 9901
# Where the gateway Deployment mounts the ConfigMap.
MOUNTED_DESCRIPTOR = Path("/etc/envoy/helios.pb")


def _svc(name: str, port: int = GRPC_PORT, cluster: str | None = None) -> Upstream:
    return Upstream(cluster or name, f"{name}.{NAMESPACE}.svc.cluster.local", port)


def render(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    build_descriptor_set(out_dir / "helios.pb")
    proxy = _svc("helios-proxy")
    services = {
        "helios.v1.InferenceService": proxy,
        "helios.v1.AdminService": proxy,
        "helios.v1.EstimatorService": _svc("helios-estimator"),
        "helios.v1.RegistryService": _svc("helios-registry"),
    }
    metrics = _svc("helios-proxy", METRICS_PORT, "helios-proxy-metrics")
    config = render_envoy_config(
        listen_host="0.0.0.0",
        listen_port=LISTEN_PORT,
        admin_port=ADMIN_PORT,
        descriptor_path=MOUNTED_DESCRIPTOR,
        grpc_upstreams=services,
        default_grpc_upstream=proxy,
        metrics_upstream=metrics,
        xds_upstream=proxy,
    )
    virtual_host, _ = edge_virtual_host(
        grpc_upstreams=services,
        default_grpc_upstream=proxy,
        metrics_upstream=metrics,
        access=EdgeAccess(),
    )
    write_edge_routes(out_dir / "edge-routes.json", virtual_host)
    tmp = out_dir / ".envoy.json.tmp"
    with tmp.open("w", encoding="utf-8") as f:
        f.write(config)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(out_dir / "envoy.json")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the files are stale")
    args = parser.parse_args()
    if not args.check:
        render(OUT_DIR)
        print(f"wrote {OUT_DIR / 'envoy.json'} and {OUT_DIR / 'helios.pb'}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        render(Path(tmp))
        stale = [
            name
            for name in ("envoy.json", "helios.pb", "edge-routes.json")
            if not (OUT_DIR / name).is_file()
            or (OUT_DIR / name).read_bytes() != (Path(tmp) / name).read_bytes()
        ]
    if stale:
        print(
            f"stale: deploy/base/envoy/{', '.join(stale)}; run: python tools/render_k8s_envoy.py",
            file=sys.stderr,
        )
        return 1
    print("deploy/base/envoy is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
