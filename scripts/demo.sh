#!/usr/bin/env bash
# The embedded default: kic-registry holding the test images, and a VCH named `demo` made by
# kic-machine; the docker CLI pulls from the registry and runs a container VM through the VCH.
# Leaves both running and prints how to connect.
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

# The VCH: kic-machine creates it (certificates in $state/demo/), supervises its endpoint, and
# hands out a DOCKER_HOST line; from then on it is the plain docker CLI.
km=$PWD/$bin/kic-machine
export KIC_TETHER=${KIC_TETHER:-$PWD/target/x86_64-unknown-linux-gnu/release/kic-tether}
export KIC_VCH_BIN=$PWD/$bin/kic-vch
if [ -f /var/lib/kic/vch/demo/config.json ]; then
  echo "==> VCH demo exists; upgrading it to this build and starting it if needed"
  "$km" upgrade demo >/dev/null || true
  "$km" start demo >/dev/null 2>&1 || true
else
  echo "==> kic-machine create --name demo"
  (cd "$state" && "$km" create --name demo --image-store "$ds" --volume-store "$state/volumes:default" --insecure-registry "$reg")
fi
envline=$(cat "$state/demo/demo.env")
export $envline
echo "==> docker info (the VCH)"
docker info --format '{{.Name}}: {{.Containers}} containers, {{.Images}} images, {{.OperatingSystem}}' 
for img in busybox debian; do
  echo "==> docker pull $reg/library/$img"
  docker pull "$reg/library/$img:latest"
done
docker tag "$reg/library/busybox:latest" busybox:latest
echo "==> docker run --rm busybox (a container VM)"
echo
docker run --rm busybox sh -c 'echo "Hello from container VM $(hostname)"; uname -a; grep -m1 "model name" /proc/cpuinfo'
webport=${KIC_DEMO_WEB_PORT:-8080}
echo
echo "==> docker run -d -p $webport:80 busybox httpd (a published port on the bridge network)"
docker rm -f kic-demo-web >/dev/null 2>&1 || true
docker run -d --name kic-demo-web -p "$webport:80" busybox httpd -f -p 80 -h /etc >/dev/null
for _ in $(seq 1 60); do
  if out=$(curl -fsS "http://127.0.0.1:$webport/hostname" 2>/dev/null); then
    echo "curl http://127.0.0.1:$webport/hostname -> $out (the container's hostname)"
    break
  fi
  sleep 1
done
docker rm -f kic-demo-web >/dev/null
echo
echo "Registry:  http://$reg  admin password in $pwfile  (stop: kill \$(cat $state/registry/pid))"
echo "VCH demo:  export $envline"
echo "           docker run --rm -it busybox sh"
echo "           $km inspect demo    (ls, debug, configure, upgrade, stop, delete)"
