#!/usr/bin/env bash
# The project's own test images (busybox and debian, built by kic-mkimage) through kic-registry
# with skopeo: pushed in as admin, inspected, copied back out anonymously from a public project,
# and the copy carries the same layers and config as the original.
# Usage: tests/registry/test_images_roundtrip.sh KIC_REGISTRY_BINARY IMAGES_DIR
set -euo pipefail
bin=$1; images=$2
work=$(mktemp -d); pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
KIC_REGISTRY_ADMIN_PASSWORD=rt-secret "$bin" serve --data-dir "$work/data" --listen 127.0.0.1:0 >"$work/log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do grep -q "listening on" "$work/log" && break; sleep 0.1; done
addr=$(sed -n 's/.*listening on http:\/\/\([^ ]*\).*/\1/p' "$work/log" | head -1)
[ -n "$addr" ] || { cat "$work/log"; echo "kic-registry did not start" >&2; exit 1; }
curl -fsS -o /dev/null -u admin:rt-secret -H 'Content-Type: application/json' \
  -X POST "http://$addr/api/v2.0/projects" -d '{"project_name":"kic","metadata":{"public":"true"}}'
for img in busybox debian; do
  skopeo copy --quiet --dest-tls-verify=false --dest-creds admin:rt-secret "oci:$images/$img:latest" "docker://$addr/kic/$img:latest"
  # Anonymous: the project is public.
  skopeo copy --quiet --src-tls-verify=false "docker://$addr/kic/$img:latest" "oci:$work/out-$img:latest"
  want=$(skopeo inspect --raw "oci:$images/$img:latest" | python3 -c 'import json,sys; m=json.load(sys.stdin); print(m["config"]["digest"], *[l["digest"] for l in m["layers"]])')
  got=$(skopeo inspect --raw "oci:$work/out-$img:latest" | python3 -c 'import json,sys; m=json.load(sys.stdin); print(m["config"]["digest"], *[l["digest"] for l in m["layers"]])')
  remote=$(skopeo inspect --tls-verify=false --format '{{.Digest}}' "docker://$addr/kic/$img:latest")
  [ "$want" = "$got" ] || { echo "$img: copied out differs: $want vs $got" >&2; exit 1; }
  [ -n "$remote" ] || { echo "$img: skopeo inspect gave no digest" >&2; exit 1; }
  echo "ok: $img round trip through kic-registry ($remote)"
done
