#!/bin/sh
# `make bench-registry`: kic-registry against Debian's docker-registry (CNCF Distribution 2.8),
# same machine, same data, same client. Extra arguments go to kic-registry-bench
# (see `kic-registry-bench --help`); the last line printed gives the ratios.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
dist=$(command -v docker-registry || true)
[ -n "$dist" ] || { echo "docker-registry not installed: run tests/registry/deps.sh" >&2; exit 1; }
(cd "$root" && cargo build --release -q -p kic-registry --bins)
exec "$target/release/kic-registry-bench" --ours "$target/release/kic-registry" --distribution "$dist" "$@"
