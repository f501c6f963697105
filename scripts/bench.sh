#!/usr/bin/env bash
# Container start versus the bare-boot floor, and idle VM memory (see kic-bench's docs).
set -euo pipefail
cd "$(dirname "$0")/.."
export KIC_TETHER="$PWD/target/x86_64-unknown-linux-gnu/release/kic-tether"
exec target/release/kic-bench --image build/images/busybox "$@"
