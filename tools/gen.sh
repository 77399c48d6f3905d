#!/usr/bin/env bash
# Generates gen/ from proto/ (python messages, .pyi stubs, gRPC stubs) with buf.
# Usage: tools/gen.sh [OUTPUT_ROOT]   (default: the repository root, i.e. writes gen/)
# The new package is generated beside the old one and swapped in with two renames, so a
# process importing helios.v1 meanwhile (a test run) never finds it missing.
set -euo pipefail
cd "$(dirname "$0")/.."
out_root="${1:-.}"
mkdir -p "$out_root/gen"
staging=$(mktemp -d "$out_root/gen/.staging.XXXXXX")
trap 'rm -rf "$staging"' EXIT
node_modules/.bin/buf generate --output "$staging"
# Regular packages (not namespace packages) so that installers and type checkers agree.
touch "$staging/gen/helios/__init__.py" "$staging/gen/helios/v1/__init__.py"
old="$staging/old"
if [ -e "$out_root/gen/helios" ]; then mv "$out_root/gen/helios" "$old"; fi
mv "$staging/gen/helios" "$out_root/gen/helios"
