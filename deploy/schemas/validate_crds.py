"""Validate the custom resources in rendered manifests against deploy/schemas/*.json.

    python deploy/schemas/validate_crds.py RENDERED.yaml...

Every document whose apiVersion is not a core Kubernetes group must match one of the
vendored schemas (written from the upstream CRDs' openAPIV3Schema, trimmed, with unknown
fields rejected as the API server's strict field validation would). A custom resource with
no vendored schema is an error, not a skip. Exit status 1 on any failure.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_DIR = Path(__file__).resolve().parent
# API groups kubernetes-validate checks (the built-in ones); everything else is a CRD.
CORE_GROUPS = frozenset(
    {
        "",
        "apps",
        "batch",
        "policy",
        "autoscaling",
        "networking.k8s.io",
        "rbac.authorization.k8s.io",
        "discovery.k8s.io",
        "storage.k8s.io",
        "scheduling.k8s.io",
        "coordination.k8s.io",
    }
)


def load_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> JSON schema, from every *.json beside this file."""
    schemas = {}
    for path in sorted(SCHEMA_DIR.glob("*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        schema = doc["openAPIV3Schema"]
        jsonschema.Draft7Validator.check_schema(schema)
        schemas[(f"{doc['group']}/{doc['version']}", doc["kind"])] = schema
    return schemas


def group_of(api_version: str) -> str:
    return api_version.rpartition("/")[0] if "/" in api_version else ""


def validate_file(path: Path, schemas: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    errors: list[str] = []
    checked = 0
    for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
        if not doc:
            continue
        api_version, kind = str(doc.get("apiVersion", "")), str(doc.get("kind", ""))
        name = (doc.get("metadata") or {}).get("name", "?")
        where = f"{path}: {kind}/{name} ({api_version})"
        if group_of(api_version) in CORE_GROUPS:
            continue
        schema = schemas.get((api_version, kind))
        if schema is None:
            errors.append(f"{where}: no vendored schema in {SCHEMA_DIR}")
            continue
        checked += 1
        for error in jsonschema.Draft7Validator(schema).iter_errors(doc):
            at = ".".join(str(p) for p in error.absolute_path) or "(root)"
            errors.append(f"{where}: {at}: {error.message}")
    print(f"{path}: {checked} custom resources checked against vendored CRD schemas")
    return errors


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    schemas = load_schemas()
    errors = [e for arg in argv for e in validate_file(Path(arg), schemas)]
    for error in errors:
        print(f"ERROR {error}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
