#!/usr/bin/env bash
# run-vmtest.sh [TEST-BINARY [ARGS...]]
#
# The vmtest tier in one command: sets up the host (vmtest-setup.sh), boots
# the "kernel" target of vmtest.toml and runs rootfs-tools/vmtest-guest.sh in
# the guest with TEST-BINARY and ARGS (e.g. the kernel integration test
# harness target/debug/deps/kernel-<hash>). Guest output streams to stdout;
# the exit status is the guest command's (69 if the VM itself failed).
# Without a test binary it only boots and runs the smoke checks.
# FAASD_VMTEST_TIMEOUT (s, default 1800) bounds the whole VM run (exit 124).
# FAASD_VMTEST_KVM=1 uses KVM instead of emulation; FAASD_VMTEST_VERBOSE=1
# shows the full guest kernel log.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")

"$here/vmtest-setup.sh"
export PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin"

# The guest runs the command from the repo root; make a relative test binary
# path absolute first, from the caller's directory.
if [[ $# -gt 0 && "$1" != /* && -e "$1" ]]; then
    set -- "$(realpath "$1")" "${@:2}"
fi
cd "$repo"
args_file=$(mktemp "$repo/target/vmtest/guest-args.XXXXXX")
trap 'rm -f "$args_file"' EXIT
if [[ $# -gt 0 ]]; then
    printf '%s\n' "$@" >"$args_file"
fi
export FAASD_VMTEST_ARGS_FILE=$args_file
export FAASD_VMTEST_REPO=$repo
export VMTEST_NO_UI=1

echo "run-vmtest: booting $(readlink -f target/vmtest/vmlinuz) ($([[ "${FAASD_VMTEST_KVM:-0}" == 1 ]] && echo KVM || echo TCG emulation)), command: ${*:-<smoke check>}"
start=$(date +%s)
set +e
# A hung guest must not hang CI: timeout kills vmtest and QEMU (its process group).
timeout -k 10 "${FAASD_VMTEST_TIMEOUT:-1800}" vmtest -c "$repo/vmtest.toml" -f '^kernel$'
rc=$?
set -e
echo "run-vmtest: vmtest exit status $rc after $(($(date +%s) - start)) s"
exit "$rc"
