#!/usr/bin/env bash
# What the black-box VCH suite needs: pytest, the Python Docker SDK, docker-compose 1.29,
# util-linux's `script` (a TTY for `docker run -it`), skopeo and a registry to seed images,
# docker.io (a private dockerd, to check the suite against real Docker) and dnsmasq (a DHCP
# server on a container network's segment).
# Idempotent: installs only what is missing.
set -euo pipefail

PKGS=(python3-pytest python3-pytest-timeout python3-docker docker-compose bsdutils skopeo docker-registry docker.io iproute2 dnsmasq-base)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> tests/vch: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v docker >/dev/null || { echo "tests/vch needs the docker CLI (28.x) on PATH" >&2; exit 1; }
exit 0
