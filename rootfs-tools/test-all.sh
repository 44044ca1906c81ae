#!/usr/bin/env bash
# The test command of the README (and of CI): everything, as root.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

[ "$(id -u)" = 0 ] || { echo "the tests need root (namespaces, mounts, cgroups)" >&2; exit 1; }

step "packages"
need=()
for pkg in busybox-static gcc libc6-dev iproute2 python3; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if ((${#need[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi

step "build"
cargo build --release --all-targets

step "unit and kernel tests on this machine"
cargo test --release
