#!/usr/bin/env bash
# Fails when gen/ differs from what proto/ generates, or when buf lint fails.
set -euo pipefail
cd "$(dirname "$0")/.."
node_modules/.bin/buf lint
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tools/gen.sh "$tmp"
if ! diff -r gen "$tmp/gen" >/dev/null; then
  echo "gen/ is stale: run 'make gen' and commit the result. Differences:" >&2
  diff -r gen "$tmp/gen" | head -40 >&2
  exit 1
fi
echo "gen/ matches proto/ and buf lint passes"
