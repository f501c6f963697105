#!/usr/bin/env bash
# Black-box test of kic-machine with the real kic-vch, libvirt and the docker CLI.
#
# Creates two VCHs (plain HTTP and mutual TLS) on 127.0.0.1 high ports, in a temporary state
# root and image store, and checks: the create transcript and NAME.env, docker version/info
# through the env line, refusal of clients without certificates, ls, inspect, inspect config,
# restart of kill -9'ed kic-vch, configure, upgrade and rollback, prerequisite errors, delete.
# Cleans up after itself. Run it inside a network namespace in CI (scripts/test.sh does).
#
#   tests/machine/test_machine.sh            # binaries from $CARGO_TARGET_DIR or ./target (debug)
#   KIC_MACHINE=/path/kic-machine KIC_VCH_BIN=/path/kic-vch KIC_TETHER=/path/kic-tether tests/machine/test_machine.sh
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
KM=${KIC_MACHINE:-$TARGET/debug/kic-machine}
export KIC_VCH_BIN=${KIC_VCH_BIN:-$(dirname "$KM")/kic-vch}
export KIC_TETHER=${KIC_TETHER:-$REPO/target/x86_64-unknown-linux-gnu/release/kic-tether}
BUSYBOX=$REPO/build/images/busybox
[ -d "$BUSYBOX" ] || { echo "missing $BUSYBOX (make images)" >&2; exit 2; }
command -v skopeo >/dev/null || { echo "missing skopeo (apt-get install skopeo)" >&2; exit 2; }
for f in "$KM" "$KIC_VCH_BIN" "$KIC_TETHER"; do
    [ -x "$f" ] || { echo "missing $f (cargo build -p kic-machine -p kic-vch; make tether)" >&2; exit 2; }
done

WORK=$(mktemp -d /tmp/kic-machine-test.XXXXXX)
chmod 755 "$WORK" # QEMU (its own user) must reach the image store below it
export KIC_STATE_ROOT=$WORK/state
STORE=$WORK/store
export DOCKER_CONFIG=$WORK/docker-config # keep the docker CLI away from ~/.docker
mkdir -p "$DOCKER_CONFIG"
unset DOCKER_HOST DOCKER_TLS_VERIFY DOCKER_CERT_PATH DOCKER_CONTEXT
START=$(date +%s)

cleanup() {
    local rc=$?
    set +e
    for d in "$KIC_STATE_ROOT"/*/; do
        [ -f "$d/config.json" ] || continue
        n=$(basename "$d")
        "$KM" delete --force "$n" >/dev/null 2>&1 || {
            # Last resort: stop what we started, by pid file.
            [ -f "$d/supervisor.pid" ] && kill "$(cat "$d/supervisor.pid")" 2>/dev/null
            sleep 1
            [ -f "$d/vch.pid" ] && kill -9 "$(cat "$d/vch.pid")" 2>/dev/null
            virsh -q pool-destroy "kic-$n" >/dev/null 2>&1
            virsh -q pool-undefine "kic-$n" >/dev/null 2>&1
        }
    done
    if [ -n "${POOL:-}" ] && virsh -q pool-info "$POOL" >/dev/null 2>&1; then
        virsh -q pool-destroy "$POOL" >/dev/null 2>&1
        virsh -q pool-undefine "$POOL" >/dev/null 2>&1
    fi
    if [ $rc -ne 0 ]; then
        echo "--- FAILED (rc $rc); logs:" >&2
        for l in "$KIC_STATE_ROOT"/*/supervisor.log "$KIC_STATE_ROOT"/*/vch.log; do
            [ -f "$l" ] && { echo "== $l" >&2; tail -n 30 "$l" >&2; }
        done
    fi
    rm -rf "$WORK"
    exit $rc
}
trap cleanup EXIT
trap "exit 130" INT TERM # so that cleanup runs on Ctrl-C and kill too

fail() { echo "FAIL: $*" >&2; exit 1; }
step() { echo "=== $* ($(( $(date +%s) - START ))s)"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
ping_sock() { curl -sf --max-time 5 --unix-socket "$KIC_STATE_ROOT/$1/docker.sock" http://kic/_ping; }

P1=$(free_port)
P2=$(free_port)
cd "$WORK"

step "prerequisite checks fail early and clearly"
out=$("$KM" create --name 'bad name' --image-store "$STORE" 2>&1) && fail "bad name accepted"
grep -q 'invalid VCH name' <<<"$out" || fail "bad name: $out"
out=$("$KM" create --name kt0 --image-store "$STORE" --target qemu:///nonexistent 2>&1) && fail "bad target accepted"
grep -q 'cannot connect to libvirt at qemu:///nonexistent' <<<"$out" || fail "bad target: $out"
out=$("$KM" create --name kt0 --image-store "$STORE" --tether /bin/true 2>&1) && fail "dynamic tether accepted"
grep -q 'not a statically linked' <<<"$out" || fail "dynamic tether: $out"
python3 -c 'import socket,time; s=socket.socket(); s.bind(("127.0.0.1",'"$P1"')); s.listen(); time.sleep(20)' &
HOLD=$!
sleep 0.5
out=$("$KM" create --name kt0 --image-store "$STORE" --endpoint 127.0.0.1:$P1 2>&1) && fail "busy port accepted"
grep -q "cannot listen on 127.0.0.1:$P1" <<<"$out" || fail "busy port: $out"
kill $HOLD; wait $HOLD 2>/dev/null || true
[ ! -e "$KIC_STATE_ROOT/kt0" ] || fail "a failed create left state behind"

step "an endpoint that dies during startup: create shows its log and leaves nothing behind"
cat >"$WORK/broken-kic-vch" <<'EOF2'
#!/bin/sh
[ "$1" = --version ] && { echo "kic-vch 9.9.9-broken"; exit 0; }
echo "broken endpoint: cannot start (test fixture)" >&2
exit 3
EOF2
chmod +x "$WORK/broken-kic-vch"
out=$(KIC_VCH_BIN=$WORK/broken-kic-vch "$KM" create --name kt0 --image-store "$STORE" --endpoint 127.0.0.1:$P1 --no-tls 2>&1) && fail "broken endpoint accepted"
grep -q "broken endpoint: cannot start" <<<"$out" || fail "vch.log tail not shown: $out"
[ ! -e "$KIC_STATE_ROOT/kt0" ] && [ ! -e "$STORE/kt0" ] || fail "a failed create left state behind"
! virsh -q pool-info kic-kt0 >/dev/null 2>&1 || fail "pool kic-kt0 left"

step "create kt1 (--no-tls)"
"$KM" create --name kt1 --image-store "$STORE" --endpoint 127.0.0.1:$P1 --no-tls --volume-store "$WORK/vols1:default" | tee kt1.out
[ "$(tail -n 1 kt1.out | sed 's/^INFO\[[0-9]*\] //')" = "Installer completed successfully" ] || fail "kt1 last line"
[ "$(cat kt1/kt1.env)" = "DOCKER_HOST=tcp://127.0.0.1:$P1" ] || fail "kt1 env: $(cat kt1/kt1.env)"
grep -q "DOCKER_HOST=tcp://127.0.0.1:$P1" kt1.out || fail "env line not in transcript"
env $(cat kt1/kt1.env) docker version >/dev/null
env $(cat kt1/kt1.env) docker info >/dev/null

step "create kt2 (mutual TLS, limits, volume store) while kt1 runs"
"$KM" create --name kt2 --image-store "$STORE" --endpoint 127.0.0.1:$P2 \
    --memory 4GiB --cpu 4 --containers 5 --volume-store "$WORK/vols:default" --tls-cname localhost | tee kt2.out
[ "$(tail -n 1 kt2.out | sed 's/^INFO\[[0-9]*\] //')" = "Installer completed successfully" ] || fail "kt2 last line"
[ "$(cat kt2/kt2.env)" = "DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH=$WORK/kt2 DOCKER_HOST=tcp://localhost:$P2" ] || fail "kt2 env: $(cat kt2/kt2.env)"
for f in ca.pem ca-key.pem cert.pem key.pem server-cert.pem server-key.pem; do [ -s "kt2/$f" ] || fail "kt2/$f missing"; done
[ "$(stat -c %a kt2/key.pem)" = 600 ] || fail "key.pem mode"
[ "$(stat -c %a kt2/ca-key.pem)" = 600 ] || fail "ca-key.pem mode"
openssl verify -CAfile kt2/ca.pem -purpose sslclient kt2/cert.pem >/dev/null
env $(cat kt2/kt2.env) docker version >/dev/null
env $(cat kt2/kt2.env) docker info >/dev/null
docker -H tcp://127.0.0.1:$P2 --tlsverify --tlscacert kt2/ca.pem --tlscert kt2/cert.pem --tlskey kt2/key.pem version >/dev/null

step "clients without a certificate of kt2's CA are refused"
if docker -H tcp://127.0.0.1:$P2 version >/dev/null 2>&1; then fail "plain client accepted"; fi
if curl -sf --max-time 10 --cacert kt2/ca.pem https://localhost:$P2/_ping >/dev/null 2>&1; then fail "TLS client without certificate accepted"; fi
curl -sf --max-time 10 --cacert kt2/ca.pem --cert kt2/cert.pem --key kt2/key.pem https://localhost:$P2/_ping | grep -q OK
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout other-key.pem -out other.pem \
    -subj /CN=intruder -days 2 2>/dev/null
if curl -sf --max-time 10 --cacert kt2/ca.pem --cert other.pem --key other-key.pem https://localhost:$P2/_ping >/dev/null 2>&1; then
    fail "client certificate of another CA accepted"
fi
# The VCHs are isolated: kt1's socket does not serve kt2's certificates and vice versa.
[ "$(cat "$KIC_STATE_ROOT/kt1/config.json" | json 'd["datastore"]')" = "$STORE/kt1" ] || fail "kt1 datastore"
[ "$(cat "$KIC_STATE_ROOT/kt2/config.json" | json 'd["datastore"]')" = "$STORE/kt2" ] || fail "kt2 datastore"

step "kt3: client CAs of the admin's own (--tls-ca), replaced by configure --tls-ca"
mkca() { # NAME: a CA NAME.pem and a client pair NAME-client.pem/NAME-client-key.pem signed by it
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1-key.pem" -out "$1.pem" \
        -subj "/CN=$1" -days 2 -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1-client-key.pem" -out "$1.csr" \
        -subj "/CN=$1-user" 2>/dev/null
    printf 'extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n' >"$1.ext"
    openssl x509 -req -in "$1.csr" -CA "$1.pem" -CAkey "$1-key.pem" -CAcreateserial -days 2 \
        -extfile "$1.ext" -out "$1-client.pem" 2>/dev/null
}
mkca userca
mkca userca2
P3=$(free_port)
"$KM" create --name kt3 --image-store "$STORE" --endpoint 127.0.0.1:$P3 --tls-ca userca.pem >kt3.out
tail -n 1 kt3.out | grep -q "Installer completed successfully" || fail "kt3 create"
[ ! -e kt3/cert.pem ] || fail "a client pair was generated despite --tls-ca"
u1() { curl -sf --max-time 10 --cacert kt3/ca.pem --cert userca-client.pem --key userca-client-key.pem https://127.0.0.1:$P3/_ping; }
u2() { curl -sf --max-time 10 --cacert kt3/ca.pem --cert userca2-client.pem --key userca2-client-key.pem https://127.0.0.1:$P3/_ping; }
u1 | grep -q OK || fail "client of --tls-ca refused"
if u2 >/dev/null 2>&1; then fail "client of another CA accepted"; fi
grep -q -- "--tls-ca $WORK/userca.pem" <<<"$("$KM" inspect config kt3)" || fail "inspect config lacks --tls-ca"
"$KM" configure kt3 --tls-ca userca2.pem >/dev/null
u2 | grep -q OK || fail "client of the new --tls-ca refused"
if u1 >/dev/null 2>&1; then fail "client of the replaced CA still accepted"; fi
"$KM" delete kt3 >/dev/null

step "kt4: --no-tlsverify on an image store given as a libvirt pool"
POOL=kicmtest-$$
mkdir -p "$WORK/pooldir"
virsh -q pool-define-as "$POOL" dir --target "$WORK/pooldir" >/dev/null
virsh -q pool-start "$POOL" >/dev/null
P4=$(free_port)
"$KM" create --name kt4 --image-store "pool:$POOL" --endpoint 127.0.0.1:$P4 --no-tlsverify >kt4.out
tail -n 1 kt4.out | grep -q "Installer completed successfully" || fail "kt4 create"
[ "$(json 'd["datastore"]' <"$KIC_STATE_ROOT/kt4/config.json")" = "$WORK/pooldir/kt4" ] || fail "kt4 datastore"
[ ! -e kt4/cert.pem ] && [ -s kt4/ca.pem ] || fail "kt4 certificates"
env $(cat kt4/kt4.env) docker version >/dev/null # server verified with ca.pem, no client certificate
curl -sf --max-time 10 --cacert kt4/ca.pem https://127.0.0.1:$P4/_ping | grep -q OK
grep -q -- "--image-store pool:$POOL" <<<"$("$KM" inspect config kt4)" || fail "kt4 inspect config"
grep -q -- "--no-tlsverify" <<<"$("$KM" inspect config kt4)" || fail "kt4 inspect config tls"
"$KM" delete kt4 >/dev/null
virsh -q pool-info "$POOL" >/dev/null || fail "delete removed a pool it did not create"
virsh -q pool-destroy "$POOL" >/dev/null; virsh -q pool-undefine "$POOL" >/dev/null

step "ls and inspect"
"$KM" ls
"$KM" ls --format json >ls.json
[ "$(json 'len(d)' <ls.json)" = 2 ] || fail "ls count"
[ "$(json '" ".join(v["name"]+":"+v["status"] for v in d)' <ls.json)" = "kt1:running kt2:running" ] || fail "ls: $(cat ls.json)"
[ "$(json '[v for v in d if v["name"]=="kt2"][0]["endpoint"]' <ls.json)" = "tcp://localhost:$P2" ] || fail "ls endpoint"
"$KM" inspect kt2 | tee inspect.txt
grep -q "DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH=$WORK/kt2 DOCKER_HOST=tcp://localhost:$P2" inspect.txt || fail "inspect env"
grep -q "memory 4096 MiB, vCPUs 4, containers 5" inspect.txt || fail "inspect limits"
grep -q "docker -H localhost:$P2 --tlsverify" inspect.txt || fail "inspect connect"
cfg=$("$KM" inspect config kt2)
echo "$cfg"
for w in "--name kt2" "--image-store $STORE" "--endpoint 127.0.0.1:$P2" "--memory 4096MiB" "--cpu 4" \
    "--containers 5" "--volume-store $WORK/vols:default" "--tls-cname localhost"; do
    grep -q -- "$w" <<<"$cfg" || fail "inspect config lacks $w"
done
[ "$("$KM" inspect kt2 --config)" = "$cfg" ] || fail "inspect --config differs"
grep -q -- "--no-tls" <<<"$("$KM" inspect config kt1)" || fail "kt1 inspect config lacks --no-tls"
"$KM" inspect kt2 --format json | json 'd["versions"]["bootstrap"]'

step "a container VM in kt2"
skopeo copy -q "oci:$BUSYBOX" "docker-archive:$WORK/busybox.tar:busybox:latest"
d2() { env $(cat kt2/kt2.env) docker "$@"; }
d2 load -i "$WORK/busybox.tar" >/dev/null
d2 run -d --name c1 busybox sleep 100000 >/dev/null
dom() { virsh -q list --name | grep '^kic-kt2-c1-' ; }
domid() { virsh -q domid "$(dom)"; }
DOMID=$(domid)
[ -n "$DOMID" ] || fail "no domain for c1"
c1_running() { [ "$(d2 inspect -f '{{.State.Running}}' c1)" = true ] && [ "$(domid)" = "$DOMID" ] || fail "c1 did not keep running ($1)"; }
[ "$("$KM" ls --format json | json '[v for v in d if v["name"]=="kt2"][0]["running"]')" = 1 ] || fail "ls running count"

step "kill -9 of kic-vch: the supervisor restarts it"
old=$(cat "$KIC_STATE_ROOT/kt2/vch.pid")
kill -9 "$old"
t0=$(date +%s%N)
until [ -s "$KIC_STATE_ROOT/kt2/vch.pid" ] && [ "$(cat "$KIC_STATE_ROOT/kt2/vch.pid")" != "$old" ]; do
    [ $(( ($(date +%s%N) - t0) / 1000000 )) -lt 2000 ] || fail "kic-vch not restarted within 2s"
    sleep 0.05
done
echo "restarted after $(( ($(date +%s%N) - t0) / 1000000 )) ms"
until ping_sock kt2 >/dev/null 2>&1 && [ "$(cat "$KIC_STATE_ROOT/kt2/vch.pid" 2>/dev/null)" != "$old" ]; do
    [ $(( ($(date +%s%N) - t0) / 1000000 )) -lt 60000 ] || fail "kic-vch not restarted within 60s"
    sleep 0.1
done
echo "answering again after $(( ($(date +%s%N) - t0) / 1000000 )) ms"
grep -q "kic-vch exited unexpectedly (pid $old" "$KIC_STATE_ROOT/kt2/supervisor.log" || fail "restart not logged"
env $(cat kt2/kt2.env) docker version >/dev/null
c1_running "kill -9 of kic-vch"

step "the endpoint survives the shell that created it"
[ "$(ps -o sid= -p "$(cat "$KIC_STATE_ROOT/kt2/supervisor.pid")" | tr -d ' ')" = "$(cat "$KIC_STATE_ROOT/kt2/supervisor.pid")" ] || fail "supervisor is not a session leader"

step "configure changes limits"
"$KM" configure kt2 --containers 7 --memory 8GiB --cpu unlimited | tee configure.out
tail -n 1 configure.out | grep -q "Completed successfully"
[ "$(json 'd["limits"]' <"$KIC_STATE_ROOT/kt2/config.json")" = "{'memory_mib': 8192, 'cpus': None, 'containers': 7}" ] || fail "config limits: $(cat "$KIC_STATE_ROOT/kt2/config.json")"
grep -q "memory 8192 MiB, vCPUs unlimited, containers 7" <<<"$("$KM" inspect kt2)" || fail "inspect after configure"
# A reader that stops early does not make kic-machine panic (it ends on SIGPIPE quietly).
err=$( { "$KM" inspect kt2 | head -n 1 >/dev/null; } 2>&1 || true)
! grep -q panicked <<<"$err" || fail "inspect | head: $err"
c1_running "configure"
"$KM" configure kt2 --volume-store "$WORK/vols2:fast" >/dev/null
[ "$(json 'd["volume_stores"]["fast"]' <"$KIC_STATE_ROOT/kt2/config.json")" = "$WORK/vols2" ] || fail "volume store not added"
"$KM" configure kt2 --containers 1 >/dev/null
out=$(d2 run -d --name c2 busybox true 2>&1) && fail "container limit not enforced"
grep -q "limit of 1 container" <<<"$out" || fail "limit message: $out"
env $(cat kt2/kt2.env) docker info >/dev/null
out=$("$KM" configure kt2 --memory 100 2>&1) && fail "memory below a container accepted"
grep -q "less than one container" <<<"$out" || fail "configure check: $out"

step "upgrade and rollback"
out=$("$KM" upgrade kt2 2>&1) && fail "upgrade to the same binaries accepted"
grep -q "already runs these binaries" <<<"$out" || fail "upgrade refusal: $out"
out=$("$KM" upgrade kt2 --rollback 2>&1) && fail "rollback without upgrade accepted"
grep -q "nothing to roll back to" <<<"$out" || fail "rollback refusal: $out"
"$KM" upgrade kt2 --force | tee upgrade.out
grep -q "kic-vch: .* -> " upgrade.out || fail "upgrade versions"
grep -q "bootstrap: .* -> " upgrade.out || fail "upgrade bootstrap versions"
[ -x "$KIC_STATE_ROOT/kt2/bin.prev/kic-vch" ] && [ -f "$KIC_STATE_ROOT/kt2/bin.prev/config.json" ] || fail "bin.prev"
env $(cat kt2/kt2.env) docker version >/dev/null
out=$(KIC_VCH_BIN=$WORK/broken-kic-vch "$KM" upgrade kt2 2>&1) && fail "upgrade to a broken endpoint succeeded"
grep -q "rolling back" <<<"$out" || fail "no automatic rollback: $out"
env $(cat kt2/kt2.env) docker version >/dev/null
c1_running "upgrade"
"$KM" upgrade kt2 --rollback | tee rollback.out
tail -n 1 rollback.out | grep -q "Completed successfully"
c1_running "rollback"
env $(cat kt2/kt2.env) docker version >/dev/null

step "debug"
"$KM" debug kt1 --log-level debug | tee debug.out
grep -q "$KIC_STATE_ROOT/kt1/vch.log" debug.out || fail "debug log path"
[ "$(json 'd["debug"]' <"$KIC_STATE_ROOT/kt1/config.json")" = True ] || fail "debug not set"
ping_sock kt1 | grep -q OK

step "stop and start"
"$KM" stop kt1
[ "$("$KM" ls --format json | json '[v for v in d if v["name"]=="kt1"][0]["status"]')" = stopped ] || fail "kt1 not stopped"
"$KM" start --all | tee start.out
grep -q "VCH kt2: running already" start.out || fail "start --all restarted a running VCH"
env $(cat kt1/kt1.env) docker version >/dev/null

step "a second create with the same name is refused"
out=$("$KM" create --name kt1 --image-store "$STORE" --no-tls 2>&1) && fail "duplicate name accepted"
grep -q 'already exists' <<<"$out" || fail "duplicate: $out"

step "delete"
out=$("$KM" delete kt2 2>&1) && fail "delete with a running container accepted"
grep -q "running containers (c1)" <<<"$out" || fail "delete refusal: $out"
c1_running "refused delete"
"$KM" delete kt1 | tee delete1.out
tail -n 1 delete1.out | grep -q "Completed successfully"
[ ! -e "$KIC_STATE_ROOT/kt1" ] || fail "kt1 state left"
[ ! -e "$STORE/kt1" ] || fail "kt1 datastore left"
env $(cat kt2/kt2.env) docker version >/dev/null # the other VCH is untouched
[ -d "$WORK/vols1" ] || fail "volume store removed without --force"
"$KM" delete --name kt2 --force
[ ! -e "$WORK/vols" ] || fail "volume store kic-machine created kept with --force"
[ -z "$(virsh -q list --all --name | grep '^kic-kt2-')" ] || fail "container VMs of kt2 left"
[ ! -e "$KIC_STATE_ROOT/kt2" ] || fail "kt2 state left"
! virsh -q pool-info kic-kt2 >/dev/null 2>&1 || fail "pool kic-kt2 left"
[ "$("$KM" ls --format json | json 'len(d)')" = 0 ] || fail "ls after delete"

step "PASS"
