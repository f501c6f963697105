#!/usr/bin/env bash
# The whole test suite: style, lints, unit tests, and black-box tests that boot VMs,
# run inside a network namespace created here.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> rustfmt"
cargo fmt --all --check
echo "==> clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "==> build"
RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --release -p kic-tether --target x86_64-unknown-linux-gnu
cargo build --quiet --workspace --bins
cargo test --quiet --workspace --no-run
scripts/images.sh target/debug/kic-mkimage all

# Leftovers of an interrupted earlier run.
for d in $(virsh -c qemu:///system list --all --name | grep '^kic-vmtest-' || true); do
  virsh -c qemu:///system destroy "$d" >/dev/null 2>&1 || true
  virsh -c qemu:///system undefine "$d" >/dev/null 2>&1 || true
done
rm -rf /var/tmp/kic-vmtest-*

ns="kic-test-$$"
ip netns add "$ns"
trap 'ip netns del "$ns" 2>/dev/null || true; rm -rf /var/tmp/kic-vmtest-*' EXIT
ip netns exec "$ns" ip link set lo up

export KIC_TETHER="$PWD/target/x86_64-unknown-linux-gnu/release/kic-tether"
export KIC_TEST_IMAGES="$PWD/build/images"
echo "==> tests (inside network namespace $ns)"
ip netns exec "$ns" cargo test --offline --workspace -- --include-ignored
echo "==> test images through kic-registry with skopeo"
ip netns exec "$ns" bash tests/registry/test_images_roundtrip.sh "$PWD/target/debug/kic-registry" "$PWD/build/images"
echo "==> kic-machine black-box (VCH create/ls/inspect/configure/upgrade/delete, supervision)"
ip netns exec "$ns" env KIC_MACHINE="$PWD/target/debug/kic-machine" bash tests/machine/test_machine.sh
echo "==> docker CLI, docker-compose and Python SDK against a VCH (tests/vch)"
ip netns exec "$ns" env KIC_VCH_TEST_IN_NS=1 KIC_MACHINE="$PWD/target/debug/kic-machine" tests/vch/run.sh
# The registry's Python client test installs harborapi from PyPI into a venv, so it runs
# outside the namespace; it talks to a registry it starts on loopback.
echo "==> harborapi client tests"
sh tests/registry/harborapi.sh "$PWD/target/debug/kic-registry"
