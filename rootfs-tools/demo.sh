#!/usr/bin/env bash
# The main job, end to end: build, start faasd in a network and mount namespace of its
# own (so 10.0.0.x never touches this machine's network), deploy the static test handler
# with `faas new`, call it over HTTP, show the answer and the measured cold start, stop
# faasd with SIGTERM and check it removed its address and left no bundle. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" != --inside ]]; then
  [ "$(id -u)" = 0 ] || { echo "demo: needs root (namespaces, cgroups)" >&2; exit 1; }
  for pkg in busybox-static gcc libc6-dev iproute2 curl; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing="${missing:-} $pkg"
  done
  if [ -n "${missing:-}" ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing
  fi
  cargo build --release --bins
  bash rootfs-tools/build-test-images.sh target/test-images >target/test-images.log 2>&1 || { cat target/test-images.log >&2; exit 1; }
  exec unshare --net --mount --propagation private "$0" --inside
fi

state=$(mktemp -d /tmp/faasd-demo.XXXXXX)
log=$state/faasd.log
cleanup() { [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$state"; }
trap cleanup EXIT

./target/release/faasd --state-dir "$state/state" --cgroup-parent "faasd-demo-$$" 2>"$log" &
pid=$!
for _ in $(seq 100); do curl -sf http://127.0.0.1:8080/healthz >/dev/null && break; sleep 0.1; done

echo "\$ faas new hello -f target/test-images/test-handler.tar"
./target/release/faas new hello -f target/test-images/test-handler.tar
ip=$(./target/release/faas ip hello)
echo "\$ ip addr show lo"; ip addr show lo | grep -E "inet .*lo:faas"
echo "\$ curl http://$ip/demo"
answer=$(curl -sS --max-time 10 "http://$ip/demo")
echo "$answer"
grep -q "Hello from FaaS handler!" <<<"$answer" || { echo "demo: wrong answer" >&2; cat "$log" >&2; exit 1; }
grep -q "GET /demo HTTP/1.1" <<<"$answer" || { echo "demo: request line missing" >&2; exit 1; }

echo "\$ 20 more requests, one fresh container each"
for _ in $(seq 20); do curl -s -o /dev/null --max-time 10 "http://$ip/"; done
sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -o 'cold_start_ms=[0-9.]*' | cut -d= -f2 | sort -n |
  awk '{a[NR]=$1} END {printf "accept -> handler holds the socket: p50 %.2f ms, max %.2f ms over %d requests\n", a[int((NR+1)/2)], a[NR], NR}'
echo "of which served by a container started ahead (--prewarm auto) / cold:"
curl -s http://127.0.0.1:8080/metrics | grep -E '^faasd_(prewarmed|cold)_requests_total'
./target/release/faas list

kill -TERM "$pid"; wait "$pid"; pid=
if ip addr show lo | grep -q "lo:faas"; then echo "demo: address left on lo" >&2; exit 1; fi
if [ -n "$(ls -A "$state/state/bundles")" ]; then echo "demo: bundles left" >&2; exit 1; fi
echo "faasd stopped: address removed, no bundle left. Demo OK."
