#!/usr/bin/env bash
# The test command of the README (and of CI), as root: unit tests, kernel tests on this
# machine (in a private network and mount namespace), the same kernel tests inside a VM
# (vmtest, cgroup v2), the end-to-end demo, and a compile of the benchmarks.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

[ "$(id -u)" = 0 ] || { echo "the tests need root (namespaces, mounts, cgroups)" >&2; exit 1; }

step "packages"
# Every tool a test, bench, the demo or the VM tier calls is installed here (or by
# vmtest-setup.sh for the VM tier); nothing may be assumed from a hand-installed machine.
bash rootfs-tools/install-packages.sh busybox-static gcc libc6-dev iproute2 python3 curl runc \
  crun cpio gzip zstd tar util-linux apache2-utils podman skopeo docker-registry systemd \
  haproxy python3-yaml
bash rootfs-tools/vmtest-setup.sh
export PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin"

# Fail before any test runs, naming what is missing, rather than deep inside a test.
missing=()
for tool in busybox gcc ip python3 curl runc unshare nsenter cpio gzip zstd tar ab podman skopeo docker-registry htpasswd systemd-analyze haproxy vmtest qemu-system-x86_64 qemu-ga; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
# tests/manifests.rs parses deploy/kubernetes/ with it.
python3 -c 'import yaml' 2>/dev/null || missing+=(python3-yaml)
((${#missing[@]} == 0)) || { echo "missing tools after install: ${missing[*]}" >&2; exit 1; }

step "build"
cargo build --release --all-targets
# The end-to-end kernel tests deploy these; the VM has no network, so they are built here,
# before either test run (the tests look in target/test-images, or FAASD_TEST_IMAGES).
bash rootfs-tools/build-test-images.sh target/test-images >target/test-images.log 2>&1 || { cat target/test-images.log >&2; exit 1; }

step "unit and kernel tests on this machine"
cargo test --release

step "kernel tests inside a VM (vmtest)"
kernel_tests=$(cargo test --release --test kernel --no-run 2>&1 | grep -o 'target/release/deps/kernel-[0-9a-f]*' | head -1)
[ -x "$kernel_tests" ] || { echo "cannot find the kernel test binary" >&2; exit 1; }
bash rootfs-tools/run-vmtest.sh "$kernel_tests"

step "kernel tests refuse to pass without root"
# A non-root run must fail loudly, not go green with every kernel test ignored.
if out=$(setpriv --reuid=65534 --regid=65534 --clear-groups "$kernel_tests" 2>&1); then
  echo "the kernel tests passed as an unprivileged user: they must refuse" >&2; exit 1
fi
grep -q "kernel tests need root" <<<"$out" || { echo "unexpected non-root failure: $out" >&2; exit 1; }
echo "refused as expected: $(head -1 <<<"$out")"

step "end to end: faasd serving the test handler"
bash rootfs-tools/demo.sh

step "benchmarks compile"
cargo bench --no-run
