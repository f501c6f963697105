#!/usr/bin/env bash
# The embedded default: a local registry holding the test images, and a container VM run from
# an image pulled from it. Leaves the registry running and prints how to use what is there.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release
state=/var/lib/kic
ds=$state/datastore
mkdir -p "$state/registry"

port=${KIC_REGISTRY_PORT:-5000}
if ! curl -fsS "http://127.0.0.1:$port/v2/" >/dev/null 2>&1; then
  cat > "$state/registry/config.yml" <<YML
version: 0.1
storage:
  filesystem:
    rootdirectory: $state/registry/data
http:
  addr: 127.0.0.1:$port
log:
  level: error
YML
  echo "==> starting a local registry on 127.0.0.1:$port"
  nohup docker-registry serve "$state/registry/config.yml" >"$state/registry/registry.log" 2>&1 &
  echo $! > "$state/registry/pid"
  for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && break; sleep 0.1; done
fi
for img in busybox debian; do
  echo "==> pushing $img to 127.0.0.1:$port/library/$img:latest"
  skopeo copy --quiet --dest-tls-verify=false "oci:build/images/$img:latest" "docker://127.0.0.1:$port/library/$img:latest"
done

export KIC_DATASTORE=$ds KIC_VCH=demo
for img in busybox debian; do
  echo "==> pulling $img into the datastore $ds"
  "$bin/kicctl" pull "127.0.0.1:$port/library/$img:latest" >/dev/null
done
"$bin/kicctl" info | sed 's/^/    /'
echo "==> running a container VM: uname -a; cat /proc/cpuinfo | grep 'model name'"
echo
"$bin/kicctl" run --rm "127.0.0.1:$port/library/busybox:latest" sh -c 'echo "Hello from container VM $(hostname)"; uname -a; grep -m1 "model name" /proc/cpuinfo'
echo
echo "Registry:  http://127.0.0.1:$port  (stop: kill \$(cat $state/registry/pid))"
echo "Run more:  KIC_DATASTORE=$ds KIC_VCH=demo $bin/kicctl run --rm 127.0.0.1:$port/library/debian:latest cat /etc/os-release"
