#!/bin/sh
# Installs what the kic-registry tests and benchmark need (Debian 12). Run as root, before
# `cargo test -p kic-registry`, tests/registry/harborapi.sh and tests/registry/bench.sh.
set -eu
need=""
command -v skopeo >/dev/null 2>&1 || need="$need skopeo"
[ -x /bin/busybox ] || [ -x /usr/bin/busybox ] || need="$need busybox-static"
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need="$need postgresql"
command -v docker-registry >/dev/null 2>&1 || need="$need docker-registry"
command -v openssl >/dev/null 2>&1 || need="$need openssl"
command -v curl >/dev/null 2>&1 || need="$need curl"
command -v runuser >/dev/null 2>&1 || need="$need util-linux"
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need="$need python3-venv"
if [ -n "$need" ]; then
    echo "installing:$need"
    apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need
fi
# The Debian postgresql package starts a cluster under systemd where it can; tests run their
# own server in a temporary directory and need only the binaries and the postgres user.
id postgres >/dev/null 2>&1 || { echo "no postgres user after installing postgresql" >&2; exit 1; }
echo "kic-registry test dependencies present"
