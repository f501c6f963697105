#!/usr/bin/env bash
# The embedded default: kic-registry holding the test images, and a container VM run from
# an image pulled from it. Leaves the registry running and prints how to use what is there.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release
state=/var/lib/kic
ds=$state/datastore
mkdir -p "$state/registry"

port=${KIC_REGISTRY_PORT:-5000}
reg="127.0.0.1:$port"
pwfile=$state/registry/admin-password
[ -s "$pwfile" ] || (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$pwfile")
pw=$(cat "$pwfile")
if ! curl -fsS "http://$reg/api/v2.0/health" >/dev/null 2>&1; then
  echo "==> starting kic-registry on $reg (data in $state/registry/data)"
  KIC_REGISTRY_ADMIN_PASSWORD="$pw" nohup "$bin/kic-registry" serve --data-dir "$state/registry/data" \
    --listen "$reg" >"$state/registry/registry.log" 2>&1 &
  echo $! > "$state/registry/pid"
  for _ in $(seq 1 100); do curl -fsS "http://$reg/api/v2.0/health" >/dev/null 2>&1 && break; sleep 0.1; done
fi
# A public project for the test images (Harbor's API), then push them with skopeo.
curl -fsS -o /dev/null -u "admin:$pw" -H 'Content-Type: application/json' \
  -X POST "http://$reg/api/v2.0/projects" -d '{"project_name":"library","metadata":{"public":"true"}}' 2>/dev/null || true
for img in busybox debian; do
  echo "==> pushing $img to $reg/library/$img:latest"
  skopeo copy --quiet --dest-tls-verify=false --dest-creds "admin:$pw" "oci:build/images/$img:latest" "docker://$reg/library/$img:latest"
done

export KIC_DATASTORE=$ds KIC_VCH=demo
export KIC_TETHER=${KIC_TETHER:-$PWD/target/x86_64-unknown-linux-gnu/release/kic-tether}
for img in busybox debian; do
  echo "==> pulling $img into the datastore $ds"
  "$bin/kicctl" pull "127.0.0.1:$port/library/$img:latest" >/dev/null
done
"$bin/kicctl" info | sed 's/^/    /'
echo "==> running a container VM: uname -a; cat /proc/cpuinfo | grep 'model name'"
echo
"$bin/kicctl" run --rm "127.0.0.1:$port/library/busybox:latest" sh -c 'echo "Hello from container VM $(hostname)"; uname -a; grep -m1 "model name" /proc/cpuinfo'
echo
echo "Registry:  http://$reg  admin password in $pwfile  (stop: kill \$(cat $state/registry/pid))"
echo "Run more:  KIC_DATASTORE=$ds KIC_VCH=demo $bin/kicctl run --rm 127.0.0.1:$port/library/debian:latest cat /etc/os-release"
