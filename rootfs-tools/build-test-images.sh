#!/usr/bin/env bash
# Builds the test images as `docker save` tarballs, without Docker:
#   OUTDIR/test-handler.tar      classic layout: /test-handler (static C), /bin/busybox, /bin/sh
#   OUTDIR/test-handler-oci.tar  the same rootfs, OCI layout (Docker 25+), gzip layers
#   OUTDIR/test-handler-MODE.tar the same rootfs with command ["/test-handler", "MODE"], for
#                                MODE in serve, crash, noconnect, hang, flood, floodlines, slow,
#                                forkbomb, memhog (misbehaving handlers),
#                                probe (reports what it could reach: tty, io_uring),
#                                env (reports its environment and /run/secrets);
#   OUTDIR/test-handler-env-user.tar  env mode as user 1234:2345
#   OUTDIR/python-handler.tar    python3.11 from Debian packages + /test_handler.py
#   OUTDIR/net-attack.tar        /net-attack (static C): a handler that tries to take the
#                                client socket to the host network (see net-attack.c)
#   OUTDIR/control-attack.tar    /control-attack (static C): a handler that connects to its
#                                function's control socket three times (see control-attack.c)
#   OUTDIR/exe-attack.tar        entrypoint "#!/proc/self/exe", glibc from Debian packages and
#                                LD_PRELOAD=/exe-attack.so: the CVE-2019-5736 attack (exe-attack.c)
# Downloads (apt-get download) are cached in OUTDIR/.debs; reruns are fast and idempotent.
# Needs a Debian 12 machine (run as root, after `apt-get update`).
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$(realpath -m "$1")
DEBS="$OUT/.debs"
BUILD="$OUT/.build"
say() { echo "build-test-images: $*" >&2; }

mkdir -p "$OUT" "$DEBS" "$BUILD"

# --- tools ------------------------------------------------------------------------------
missing=()
command -v gcc >/dev/null || missing+=(gcc)
[ -e /usr/lib/x86_64-linux-gnu/libc.a ] || [ -n "$(find /usr/lib -name libc.a -print -quit 2>/dev/null)" ] || missing+=(libc6-dev)
command -v python3 >/dev/null || missing+=(python3)
command -v dpkg-deb >/dev/null || missing+=(dpkg)
if [ ${#missing[@]} -gt 0 ]; then
    say "installing build tools: ${missing[*]}"
    apt-get install -y --no-install-recommends "${missing[@]}"
fi

# fetch PKG...: download each package's .deb into the cache unless it is already there
fetch() {
    local p
    for p in "$@"; do
        if compgen -G "$DEBS/${p}_*.deb" >/dev/null; then
            continue
        fi
        say "downloading $p"
        (cd "$DEBS" && apt-get download "$p" 2>&1 | grep -v "^W: Download is performed unsandboxed" >&2 || true)
        compgen -G "$DEBS/${p}_*.deb" >/dev/null || { say "apt-get download $p failed (run apt-get update?)"; exit 1; }
    done
}

# unpack ROOTFS PKG...: dpkg-deb -x each cached package into ROOTFS
unpack() {
    local root=$1 p deb
    shift
    for p in "$@"; do
        deb=$(ls -1 "$DEBS/${p}"_*.deb | sort -V | tail -n1)
        say "unpacking $(basename "$deb")"
        dpkg-deb -x "$deb" "$root"
    done
}

MKIMAGE=(python3 "$HERE/mkimage.py")

# --- the static test handler --------------------------------------------------------------
say "compiling test-handler (static)"
gcc -static -O2 -Wall -o "$BUILD/test-handler" "$HERE/test-handler.c"
strip "$BUILD/test-handler" 2>/dev/null || true

BUSYBOX=/bin/busybox
if [ ! -x "$BUSYBOX" ] || ldd "$BUSYBOX" >/dev/null 2>&1; then
    # not there, or a dynamically linked busybox: take the one from busybox-static instead
    fetch busybox-static
    rm -rf "$BUILD/busybox-static"
    unpack "$BUILD/busybox-static" busybox-static
    BUSYBOX="$BUILD/busybox-static/bin/busybox"
fi
say "using busybox from $BUSYBOX"

ROOT="$BUILD/rootfs-test-handler"
rm -rf "$ROOT"
mkdir -p "$ROOT/bin"
install -m 0755 "$BUILD/test-handler" "$ROOT/test-handler"
install -m 0755 "$BUSYBOX" "$ROOT/bin/busybox"
ln -s busybox "$ROOT/bin/sh"

say "writing $OUT/test-handler.tar"
"${MKIMAGE[@]}" --rootfs "$ROOT" --cmd '["/test-handler"]' \
    --env PATH=/bin --tag test-handler:latest --layout classic --compress none -o "$OUT/test-handler.tar"
say "writing $OUT/test-handler-oci.tar"
"${MKIMAGE[@]}" --rootfs "$ROOT" --cmd '["/test-handler"]' \
    --env PATH=/bin --tag test-handler-oci:latest --layout oci --compress gzip -o "$OUT/test-handler-oci.tar"
for mode in serve crash noconnect hang flood floodlines slow forkbomb memhog probe env; do
    say "writing $OUT/test-handler-$mode.tar"
    "${MKIMAGE[@]}" --rootfs "$ROOT" --cmd "[\"/test-handler\", \"$mode\"]" \
        --env PATH=/bin --tag "test-handler-$mode:latest" --layout classic --compress none \
        -o "$OUT/test-handler-$mode.tar"
done
say "writing $OUT/test-handler-env-user.tar"
"${MKIMAGE[@]}" --rootfs "$ROOT" --cmd '["/test-handler", "env"]' --user 1234:2345 \
    --env PATH=/bin --tag test-handler-env-user:latest --layout classic --compress none \
    -o "$OUT/test-handler-env-user.tar"

# --- the attack handlers: network (net-attack.c), control socket (control-attack.c) --------
for attack in net-attack control-attack; do
    say "compiling $attack (static)"
    ATTACK="$BUILD/rootfs-$attack"
    rm -rf "$ATTACK"
    mkdir -p "$ATTACK"
    gcc -static -O2 -Wall -o "$ATTACK/$attack" "$HERE/$attack.c"
    say "writing $OUT/$attack.tar"
    "${MKIMAGE[@]}" --rootfs "$ATTACK" --cmd "[\"/$attack\"]" \
        --tag "$attack:latest" --layout classic --compress none -o "$OUT/$attack.tar"
done

# --- the /proc/self/exe attack (glibc for faasd's own binary to load) -----------------------
PY_PKGS=(python3.11-minimal libpython3.11-minimal libc6 zlib1g libexpat1 libgcc-s1)
fetch "${PY_PKGS[@]}"
say "compiling exe-attack"
EXEROOT="$BUILD/rootfs-exe-attack"
rm -rf "$EXEROOT"
mkdir -p "$EXEROOT"
unpack "$EXEROOT" libc6 libgcc-s1
rm -rf "$EXEROOT/usr/share"
gcc -shared -fPIC -O2 -Wall -o "$EXEROOT/exe-attack.so" "$HERE/exe-attack.c"
gcc -static -DHOLD -O2 -Wall -o "$EXEROOT/exe-hold" "$HERE/exe-attack.c"
printf '#!/proc/self/exe\n' > "$EXEROOT/entry"
chmod 0755 "$EXEROOT/entry"
say "writing $OUT/exe-attack.tar"
"${MKIMAGE[@]}" --rootfs "$EXEROOT" --cmd '["/entry"]' --env LD_PRELOAD=/exe-attack.so \
    --tag exe-attack:latest --layout classic --compress none -o "$OUT/exe-attack.tar"

# --- the Python handler -------------------------------------------------------------------
PYROOT="$BUILD/rootfs-python-handler"
rm -rf "$PYROOT"
mkdir -p "$PYROOT"
unpack "$PYROOT" "${PY_PKGS[@]}"

# Whatever else ldd says python3.11 needs: find the owning package on this host and add it.
extra=()
while read -r soname; do
    [ -n "$soname" ] || continue
    if [ -z "$(find "$PYROOT/lib" "$PYROOT/usr/lib" -name "$soname" -print -quit 2>/dev/null)" ]; then
        hostlib=$(ldd "$PYROOT/usr/bin/python3.11" | awk -v s="$soname" '$1 == s { print $3 }')
        pkg=$(dpkg -S "$(realpath "$hostlib")" 2>/dev/null | head -n1 | cut -d: -f1 || true)
        if [ -z "$pkg" ]; then
            say "python3.11 needs $soname and no package on this host provides it"
            exit 1
        fi
        extra+=("$pkg")
    fi
done < <(ldd "$PYROOT/usr/bin/python3.11" | awk '/=>/ { print $1 }')
if [ ${#extra[@]} -gt 0 ]; then
    say "python3.11 also needs: ${extra[*]}"
    fetch "${extra[@]}"
    unpack "$PYROOT" "${extra[@]}"
fi

rm -rf "$PYROOT/usr/share/doc" "$PYROOT/usr/share/man" "$PYROOT/usr/share/lintian" "$PYROOT/usr/share/locale"
install -m 0755 "$HERE/test_handler.py" "$PYROOT/test_handler.py"
ln -sf python3.11 "$PYROOT/usr/bin/python3"

if [ "$(id -u)" = 0 ]; then
    say "checking python3.11 runs in the rootfs (chroot)"
    chroot "$PYROOT" /usr/bin/python3.11 -c 'import socket, sys, array, os; print("python", sys.version.split()[0], "ok")'
    # Precompile the standard library (hash-checked .pyc: the image's mtimes are fixed and its
    # rootfs is read-only at run time, so timestamp-checked ones would be recompiled each start).
    if chroot "$PYROOT" /usr/bin/python3.11 -c 'import compileall' 2>/dev/null; then
        say "precompiling the standard library"
        chroot "$PYROOT" /usr/bin/python3.11 -m compileall -q --invalidation-mode unchecked-hash /usr/lib/python3.11 /test_handler.py >/dev/null || say "precompiling failed (ignored)"
    fi
    chroot "$PYROOT" /usr/bin/python3.11 -c 'import ast; ast.parse(open("/test_handler.py").read())'
else
    say "not root: skipping the chroot check of python3.11"
fi

say "writing $OUT/python-handler.tar"
"${MKIMAGE[@]}" --rootfs "$PYROOT" --cmd '["/usr/bin/python3.11", "/test_handler.py"]' \
    --env PATH=/usr/local/bin:/usr/bin:/bin --env PYTHONDONTWRITEBYTECODE=1 \
    --tag python-handler:latest --layout classic --compress none -o "$OUT/python-handler.tar"

say "done:"
ls -l "$OUT"/*.tar >&2
