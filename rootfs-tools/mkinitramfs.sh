#!/usr/bin/env bash
# mkinitramfs.sh KVER OUT
#
# Builds the tiny initramfs that lets vmtest boot Debian's modular kernel.
#
# vmtest boots the host's / over 9p (mount tag /dev/root) and passes its own
# init script as `init=` on the kernel command line. Debian builds virtio, 9p
# and virtio_console as modules, so the kernel alone cannot mount that root.
# This initramfs holds a static busybox, the needed .ko files in dependency
# order and an /init that loads them, mounts the 9p root and switch_roots
# into vmtest's init.
set -euo pipefail

if [[ $# -ne 2 ]]; then
    echo "usage: $0 KVER OUT" >&2
    exit 2
fi
kver=$1
out=$2

modules=(virtio_pci 9pnet_virtio 9p virtio_console)
busybox=$(command -v busybox || true)
[[ -n "$busybox" ]] || busybox=/bin/busybox
if ! { ldd "$busybox" 2>&1 || true; } | grep -Eq 'not a dynamic executable|statically linked'; then
    echo "mkinitramfs: $busybox is not static (install busybox-static)" >&2
    exit 1
fi
[[ -d /lib/modules/$kver ]] || {
    echo "mkinitramfs: /lib/modules/$kver missing" >&2
    exit 1
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root"/{bin,dev,proc,sys,newroot,lib/modules}
cp "$busybox" "$root/bin/busybox"
for applet in sh mount umount insmod switch_root mkdir sleep cat echo; do
    ln -s busybox "$root/bin/$applet"
done
# The kernel opens /dev/console for init's stdio before /init runs.
mknod -m 600 "$root/dev/console" c 5 1 2>/dev/null || true
mknod -m 666 "$root/dev/null" c 1 3 2>/dev/null || true

# Modules in dependency order, each once.
order=$root/lib/modules/order
: >"$order"
declare -A seen=()
while read -r cmd path _; do
    [[ "$cmd" == insmod ]] || continue # "builtin foo" lines need nothing
    [[ -n "${seen[$path]:-}" ]] && continue
    seen[$path]=1
    name=$(basename "$path")
    case "$name" in
    *.ko) cp "$path" "$root/lib/modules/$name" ;;
    *.ko.xz) xz -dc "$path" >"$root/lib/modules/${name%.xz}"; name=${name%.xz} ;;
    *.ko.zst) zstd -qdc "$path" >"$root/lib/modules/${name%.zst}"; name=${name%.zst} ;;
    *.ko.gz) gzip -dc "$path" >"$root/lib/modules/${name%.gz}"; name=${name%.gz} ;;
    *) echo "mkinitramfs: unknown module format $path" >&2; exit 1 ;;
    esac
    echo "$name" >>"$order"
done < <(modprobe --show-depends -S "$kver" -a "${modules[@]}")
echo "mkinitramfs: kernel $kver modules: $(tr '\n' ' ' <"$order")"

cat >"$root/init" <<'EOF'
#!/bin/sh
# initramfs /init for vmtest: load virtio/9p modules, mount the 9p root, hand
# over to the init= that vmtest put on the kernel command line.
export PATH=/bin
mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sys /sys
mount -t devtmpfs -o nosuid dev /dev
fail() {
    echo "initramfs: $*" >/dev/console
    exit 1 # the kernel panics; panic=-1 plus -no-reboot ends QEMU
}
while read -r m; do
    insmod "/lib/modules/$m" || fail "insmod $m failed"
done </lib/modules/order
init=/sbin/init
for arg in $(cat /proc/cmdline); do
    case "$arg" in
    init=*) init=${arg#init=} ;;
    esac
done
i=0
until mount -t 9p -o trans=virtio,cache=mmap,msize=1048576,rw /dev/root /newroot; do
    i=$((i + 1))
    [ "$i" -lt 50 ] || fail "cannot mount 9p root /dev/root"
    sleep 0.1 2>/dev/null || sleep 1
done
umount /sys
umount /proc
mount --move /dev /newroot/dev || umount /dev
exec switch_root /newroot "$init"
EOF
chmod 755 "$root/init"

mkdir -p "$(dirname "$out")"
(cd "$root" && find . -print0 | sort -z | cpio --null -o -H newc --quiet) | gzip -9 >"$out.tmp"
mv "$out.tmp" "$out"
echo "mkinitramfs: wrote $out ($(stat -c %s "$out") bytes)"
