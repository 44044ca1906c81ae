#!/usr/bin/env bash
# Installs those of the given Debian packages that are not installed yet (apt-get).
set -euo pipefail
need=()
for pkg in "$@"; do
  # Installed, not just known: a removed package keeps its config files ("rc"), and
  # `dpkg -s` still succeeds for it.
  [[ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" == "install ok installed" ]] ||
    need+=("$pkg")
done
((${#need[@]})) || exit 0
echo "installing: ${need[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
