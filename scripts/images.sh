#!/usr/bin/env bash
# Build the test images (OCI layouts) from Debian packages, without internet:
#   build/images/busybox  from busybox-static
#   build/images/debian   debootstrap --variant=minbase (cached in /var/cache/kic-mkimage)
# Usage: scripts/images.sh KIC_MKIMAGE_BINARY [busybox|debian|all]
set -euo pipefail
mk=$1; which=${2:-all}
out=${KIC_IMAGES_DIR:-build/images}
mkdir -p "$out"
if [ "$which" = busybox ] || [ "$which" = all ]; then
  if [ ! -f "$out/busybox/index.json" ] || [ /bin/busybox -nt "$out/busybox/index.json" ]; then
    rm -rf "$out/busybox"
    "$mk" busybox --out "$out/busybox" >/dev/null
  fi
fi
if [ "$which" = debian ] || [ "$which" = all ]; then
  if [ ! -f "$out/debian/index.json" ]; then
    rm -rf "$out/debian"
    echo "==> building the debian test image (debootstrap, a few minutes the first time)"
    "$mk" debian --out "$out/debian" >/dev/null
  fi
fi
