#!/usr/bin/env bash
# Installs everything the suite needs on a fresh Debian 12 machine with Python >= 3.11:
# system packages (FUSE, gocryptfs, swtpm, tpm2 tools, iptables, ...) and a virtualenv
# at .venv with the project and its test extras. Idempotent: a second run is fast.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(fuse3 libfuse3-dev pkg-config gocryptfs swtpm swtpm-tools tpm2-tools libtss2-dev
              iptables iproute2 nginx-light libnginx-mod-stream gcc libssl-dev systemd)
PYTHON=${PYTHON:-python3}

need_apt=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$p")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "bootstrap: installing system packages: ${need_apt[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required")'
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.cai-installed
# Reinstall when the package metadata or the native accelerator's source changes (pip builds it).
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ setup.py -nt "$stamp" ] \
   || [ cachefs/_accel.c -nt "$stamp" ]; then
  echo "bootstrap: installing the project into .venv" >&2
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test]'
  touch "$stamp"
fi
