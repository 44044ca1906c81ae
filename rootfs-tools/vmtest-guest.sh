#!/usr/bin/env bash
# vmtest-guest.sh [TEST-BINARY [ARGS...]]
#
# Runs INSIDE the vmtest guest (vmtest.toml's command). The guest's / is the
# host's / shared read-write over 9p, so the repo and target/ are visible at
# the same absolute paths as on the host; vmtest also mounts the directory of
# vmtest.toml at /mnt/vmtest. Anything written outside a guest tmpfs lands on
# the host, so the daemon's state goes to a tmpfs: FAASD_TEST_STATE, and
# TMPDIR to another directory on the guest's /run tmpfs.
#
# With no arguments, the command comes from the file named by
# $FAASD_VMTEST_ARGS_FILE (one argument per line; run-vmtest.sh writes it and
# vmtest passes the host's environment into the guest). With neither, it only
# runs the smoke checks.
set -euo pipefail
# qemu-ga (which vmtest uses to start this) daemonizes with umask 077; the
# host's is 022, and e.g. an image root made 0700 breaks non-root containers.
umask 022

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=${FAASD_VMTEST_REPO:-$(dirname "$here")}

if [[ $# -eq 0 && -n "${FAASD_VMTEST_ARGS_FILE:-}" ]]; then
    mapfile -t cmd <"$FAASD_VMTEST_ARGS_FILE"
    set -- "${cmd[@]}"
fi

echo "vmtest-guest: kernel $(uname -r), cgroup fs $(stat -fc %T /sys/fs/cgroup), $(nproc) cpus, $(awk '/MemTotal/ {print $2 " kB"}' /proc/meminfo)"

# Loopback comes up DOWN in the guest; tests that want it in the root netns get it up.
ip link set lo up 2>/dev/null || true

state=/run/faasd-state
mkdir -p "$state"
mountpoint -q "$state" || mount -t tmpfs -o mode=0755 tmpfs "$state"
export FAASD_TEST_STATE=$state
# The guest's /tmp is the host's /tmp over 9p, where AF_UNIX bind() fails
# (ENXIO); temp files and sockets go to a guest tmpfs instead.
export TMPDIR=/run/faasd-tmp
mkdir -p "$TMPDIR"
export FAASD_IN_VMTEST=1

cd "$repo"
if [[ $# -eq 0 ]]; then
    echo "vmtest-guest: no test binary given; smoke check only"
    exit 0
fi
echo "vmtest-guest: running $*"
set +e
"$@"
rc=$?
set -e
echo "vmtest-guest: exit status $rc"
exit "$rc"
