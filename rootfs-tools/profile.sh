#!/usr/bin/env bash
# Where the CPU goes at saturation (issue 12): starts faasd in a network and mount
# namespace of its own (10.x addresses never reach this machine's network), deploys the
# static test handler, drives it with `ab -c 8` (cold requests back to back), records
# the whole machine with `perf record -a -g` for SECONDS, stops everything, and prints
# the samples grouped into the issue's categories as shares of all CPU (idle included,
# so the shares add up to 100 %). Needs root.
#
#   sudo bash rootfs-tools/profile.sh [SECONDS (default 10)] [faasd flags...]
#   e.g. sudo bash rootfs-tools/profile.sh 10 --prewarm 0
#
# Keeps target/profile/perf.data for `perf report -i target/profile/perf.data`. The
# whole machine is sampled: profile on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-10}
[[ "$secs" =~ ^[0-9]+$ ]] || { echo "profile: SECONDS must be a number, got $secs" >&2; exit 1; }
shift || true
out=target/profile
clients=8

if [[ "${PROFILE_INSIDE:-}" != 1 ]]; then
  [ "$(id -u)" = 0 ] || { echo "profile: needs root (perf -a, namespaces, cgroups)" >&2; exit 1; }
  bash rootfs-tools/install-packages.sh linux-perf apache2-utils busybox-static gcc libc6-dev \
    iproute2 curl python3
  cargo build --release --bins
  [ -f target/test-images/test-handler.tar ] ||
    bash rootfs-tools/build-test-images.sh target/test-images >target/test-images.log 2>&1 ||
    { cat target/test-images.log >&2; exit 1; }
  mkdir -p "$out"
  PROFILE_INSIDE=1 exec unshare --net --mount --propagation private "$0" "$secs" "$@"
fi

# --- inside the private namespaces ------------------------------------------------------
state=$(mktemp -d /tmp/faasd-profile.XXXXXX)
cleanup() {
  [ -n "${ab_pid:-}" ] && kill "$ab_pid" 2>/dev/null
  [ -n "${faasd_pid:-}" ] && kill "$faasd_pid" 2>/dev/null
  wait 2>/dev/null
  rm -rf "$state"
  # faasd leaves its (empty) parent cgroup at stop.
  rmdir /sys/fs/cgroup/*/"faasd-profile-$$" /sys/fs/cgroup/"faasd-profile-$$" 2>/dev/null || true
}
trap cleanup EXIT

FAASD_LOG=warn ./target/release/faasd --state-dir "$state/state" --listen 127.0.0.1:8080 \
  --cgroup-parent "faasd-profile-$$" "$@" 2>"$state/faasd.log" &
faasd_pid=$!
for _ in $(seq 300); do curl -sf http://127.0.0.1:8080/healthz >/dev/null && break; sleep 0.1; done
./target/release/faas new static -f target/test-images/test-handler.tar >/dev/null
ip=$(./target/release/faas ip static)

# Warm up (pools, the daemon's threads), then saturate for a bounded time: -t bounds
# it, the -n after it (which -t would set to 50000) is a ceiling never reached.
ab -q -r -s 30 -c "$clients" -n 200 "http://$ip/" >/dev/null
ab -q -r -s 30 -c "$clients" -t $((secs + 5)) -n 10000000 "http://$ip/" >"$state/ab.txt" 2>&1 &
ab_pid=$!
sleep 1

# A VM has no hardware cycle counter: sample on the CPU clock there.
event=()
if ! perf stat -a -e cycles -- true 2>&1 | grep -q '[0-9] *cycles'; then
  event=(-e cpu-clock)
fi
echo "perf record -a -g ${event[*]} for $secs s at $clients clients (faasd ${*:-default flags})"
perf record -a -g "${event[@]}" -o "$out/perf.data" -- sleep "$secs" 2>"$state/perf.log" ||
  { cat "$state/perf.log" >&2; exit 1; }
# ab ends by itself (-t), a few seconds after perf: its summary is of the whole run.
wait "$ab_pid" || true
ab_pid=
daemon=$faasd_pid
kill -TERM "$faasd_pid"; wait "$faasd_pid" || true; faasd_pid=
rate=$(grep -o 'Requests per second: *[0-9.]*' "$state/ab.txt" | grep -o '[0-9.]*$' || echo "?")

perf script -i "$out/perf.data" -F comm,pid,ip,sym 2>/dev/null |
  python3 rootfs-tools/profile_summary.py --daemon-pid "$daemon" --rate "$rate" \
    --seconds "$secs" --clients "$clients" | tee "$out/summary.md"
