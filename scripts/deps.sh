#!/usr/bin/env bash
# Install what KIC needs on a Debian 12 host and start libvirt (no systemd needed).
# Idempotent: does nothing that is already done.
set -euo pipefail

PKGS=(qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-dev libvirt-clients dnsmasq-base
      linux-image-amd64 e2fsprogs busybox-static skopeo docker-registry nftables debootstrap
      iproute2 xz-utils cpio pkg-config clang ca-certificates procps curl)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# libvirt without systemd: its runtime directories, then the daemons.
mkdir -p /var/log/libvirt /var/run/libvirt /run/kic
if ! pgrep -x virtlogd >/dev/null; then
  echo "==> starting virtlogd"
  virtlogd -d
fi
if ! pgrep -x libvirtd >/dev/null; then
  echo "==> starting libvirtd"
  libvirtd -d
fi
for _ in $(seq 1 50); do
  virsh -c qemu:///system version >/dev/null 2>&1 && break
  sleep 0.2
done
virsh -c qemu:///system version >/dev/null || { echo "libvirtd does not answer on qemu:///system" >&2; exit 1; }

# Extra dependencies of individual components (each script installs its own).
for extra in tests/*/deps.sh; do
  [ -f "$extra" ] && bash "$extra"
done
exit 0
