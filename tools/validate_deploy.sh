#!/usr/bin/env bash
# Render every Kustomize overlay under deploy/overlays and validate it offline:
#   1. deploy/base/envoy is what tools/render_k8s_envoy.py renders from edge/ now;
#   2. core objects: kubernetes-validate --strict against Kubernetes $K8S_VERSION
#      (schemas ship inside the pip package: no network);
#   3. custom resources (Istio, Prometheus Operator): deploy/schemas/validate_crds.py.
# Needs kubectl (for `kubectl kustomize`) and the venv's kubernetes-validate, jsonschema,
# PyYAML. Exit status 0 only if everything passes.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
K8S_VERSION="${K8S_VERSION:-1.32.0}"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
VALIDATE="$(dirname "$PY")/kubernetes-validate"
[ -x "$VALIDATE" ] || VALIDATE="$(command -v kubernetes-validate)"
KUBECTL="${KUBECTL:-kubectl}"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT

echo "== Envoy config is up to date"
"$PY" "$ROOT/tools/render_k8s_envoy.py" --check

status=0
overlays=()
for dir in "$ROOT"/deploy/overlays/*/; do
  overlays+=("$(basename "$dir")")
done
[ "${#overlays[@]}" -gt 0 ] || { echo "no overlays under deploy/overlays" >&2; exit 1; }

for name in "${overlays[@]}"; do
  echo "== overlay $name"
  rendered="$OUT/$name.yaml"
  if ! "$KUBECTL" kustomize "$ROOT/deploy/overlays/$name" >"$rendered"; then
    echo "FAIL: kubectl kustomize deploy/overlays/$name" >&2
    status=1
    continue
  fi
  echo "rendered $(grep -c '^kind:' "$rendered") objects"
  if ! "$VALIDATE" --strict --quiet --no-warn -k "$K8S_VERSION" "$rendered"; then
    echo "FAIL: kubernetes-validate --strict ($name)" >&2
    status=1
  fi
  if ! "$PY" "$ROOT/deploy/schemas/validate_crds.py" "$rendered"; then
    echo "FAIL: custom resources ($name)" >&2
    status=1
  fi
done

[ "$status" -eq 0 ] && echo "deploy: all overlays valid (Kubernetes $K8S_VERSION)"
exit "$status"
