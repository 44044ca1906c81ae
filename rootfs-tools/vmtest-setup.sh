#!/usr/bin/env bash
# vmtest-setup.sh: everything the vmtest tier needs on a fresh Debian 12 host,
# run as root. Idempotent: installs only what is missing, rebuilds the
# initramfs only when the kernel or the scripts changed.
#
#  - Debian packages: qemu-system-x86 (QEMU), qemu-guest-agent (vmtest's guest
#    init runs the host's qemu-ga over the shared 9p root), linux-image-amd64
#    (the guest kernel), busybox-static, kmod and cpio (initramfs).
#  - `cargo install vmtest --locked` (0.18.x) when vmtest is not on PATH.
#  - target/vmtest/vmlinuz: the newest /boot/vmlinuz-<ver> that has modules in
#    /lib/modules/<ver> (not necessarily the running kernel).
#  - target/vmtest/initramfs.cpio.gz: built by mkinitramfs.sh for that kernel.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
out=$repo/target/vmtest
log() { echo "vmtest-setup: $*"; }

# --- Debian packages -------------------------------------------------------
pkgs=(qemu-system-x86 qemu-guest-agent linux-image-amd64 busybox-static kmod cpio)
missing=()
for pkg in "${pkgs[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done
if [[ ${#missing[@]} -gt 0 ]]; then
    if [[ $(id -u) -ne 0 ]]; then
        echo "vmtest-setup: missing packages ${missing[*]} and not root" >&2
        exit 1
    fi
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
else
    log "packages present: ${pkgs[*]}"
fi

# --- vmtest ----------------------------------------------------------------
export PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin"
if ! command -v vmtest >/dev/null; then
    log "cargo install vmtest --locked --version ^0.18"
    cargo install vmtest --locked --version '^0.18'
fi
log "$(vmtest --version) at $(command -v vmtest)"

# --- kernel ----------------------------------------------------------------
kver=
for k in $(ls /boot/vmlinuz-* 2>/dev/null | sed 's|^/boot/vmlinuz-||' | sort -V -r); do
    if [[ -d /lib/modules/$k/kernel ]]; then
        kver=$k
        break
    fi
done
if [[ -z "$kver" ]]; then
    echo "vmtest-setup: no /boot/vmlinuz-<ver> with /lib/modules/<ver> (install linux-image-amd64)" >&2
    exit 1
fi
log "guest kernel $kver (host runs $(uname -r))"

mkdir -p "$out"
ln -sfn "/boot/vmlinuz-$kver" "$out/vmlinuz"
log "$out/vmlinuz -> /boot/vmlinuz-$kver"

# --- initramfs -------------------------------------------------------------
stamp="$kver $(cat "$here/mkinitramfs.sh" /boot/vmlinuz-"$kver" | md5sum | cut -d' ' -f1)"
if [[ -f "$out/initramfs.cpio.gz" && "$(cat "$out/initramfs.stamp" 2>/dev/null)" == "$stamp" ]]; then
    log "initramfs up to date: $out/initramfs.cpio.gz"
else
    log "building initramfs for $kver"
    "$here/mkinitramfs.sh" "$kver" "$out/initramfs.cpio.gz"
    echo "$stamp" >"$out/initramfs.stamp"
fi
