#!/usr/bin/env bash
# Runs the black-box VCH suite. From anywhere (paths are taken from this script's place):
#   tests/vch/run.sh [pytest args]                       against KIC (kic-machine create)
#   KIC_TEST_TARGET=dockerd tests/vch/run.sh             against a private dockerd
# It runs inside a network namespace: the one it is started in (`ip netns exec NS tests/vch/run.sh`)
# or, when started in the host's, one it creates (loopback only) and deletes afterwards.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"

if [ -z "${KIC_VCH_TEST_IN_NS:-}" ] && [ -z "$(ip netns identify $$ 2>/dev/null)" ]; then
  ns="kic-vch-test-$$"
  ip netns add "$ns"
  trap 'ip netns del "$ns" 2>/dev/null || true' EXIT
  ip netns exec "$ns" ip link set lo up
  set +e
  KIC_VCH_TEST_IN_NS=1 ip netns exec "$ns" "$0" "$@"
  rc=$?
  exit $rc
fi
ip link set lo up 2>/dev/null || true

# Debian's interpreter: pytest, docker-py and docker-compose are its packages (tests/vch/deps.sh).
py=/usr/bin/python3
start=$(date +%s)
set +e
# Arguments that name tests replace the default (the whole suite); options are added to it.
paths=("$here")
for a in "$@"; do case "$a" in -*) ;; *) paths=(); break ;; esac; done
"$py" -m pytest -q "${paths[@]}" "$@"
rc=$?
echo "tests/vch (${KIC_TEST_TARGET:-kic}): $(( $(date +%s) - start ))s"
exit $rc
