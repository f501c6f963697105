#!/bin/sh
# Runs the harborapi (PyPI) client tests against a freshly started kic-registry.
# Usage: tests/registry/harborapi.sh [path/to/kic-registry]
# Without a path it builds the binary with cargo (CARGO_TARGET_DIR is honoured).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${1:-}
if [ -z "$bin" ]; then
    (cd "$root" && cargo build -q -p kic-registry --bin kic-registry)
    bin="${CARGO_TARGET_DIR:-$root/target}/debug/kic-registry"
fi
venv=${KIC_REGISTRY_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/kic-registry-harborapi-venv}
if [ ! -x "$venv/bin/pytest" ] || ! "$venv/bin/python" -c 'import harborapi' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q 'harborapi>=0.25' 'pytest>=7'
fi
KIC_REGISTRY_BIN="$bin" exec "$venv/bin/pytest" -q "$here/test_harborapi.py"
