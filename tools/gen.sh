#!/usr/bin/env bash
# Generates gen/ from proto/ (python messages, .pyi stubs, gRPC stubs) with buf.
# Usage: tools/gen.sh [OUTPUT_ROOT]   (default: the repository root, i.e. writes gen/)
set -euo pipefail
cd "$(dirname "$0")/.."
out_root="${1:-.}"
rm -rf "$out_root/gen/helios"
node_modules/.bin/buf generate --output "$out_root"
# Regular packages (not namespace packages) so that installers and type checkers agree.
touch "$out_root/gen/helios/__init__.py" "$out_root/gen/helios/v1/__init__.py"
