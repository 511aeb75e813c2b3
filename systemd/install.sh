#!/bin/sh
# Install the CAI systemd units, pointing ExecStart= at PREFIX/bin/cai.
#
#   python3 -m venv /opt/cai && /opt/cai/bin/pip install /path/to/this/repository
#   sudo systemd/install.sh                    # PREFIX=/opt/cai, units into /etc/systemd/system
#   sudoedit /etc/cai/cai.env                  # TRUSTEE_URL, MODEL_KEY_ID, ... (see the comments)
#   sudo systemctl enable --now cai.target
#
# Environment: PREFIX (default /opt/cai), UNIT_DIR (default /etc/systemd/system), CONF_DIR (default
# /etc/cai), NO_RELOAD=1 to skip `systemctl daemon-reload` (tests, image builds).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
PREFIX=${PREFIX:-/opt/cai}
UNIT_DIR=${UNIT_DIR:-/etc/systemd/system}
CONF_DIR=${CONF_DIR:-/etc/cai}

case $PREFIX in
  /*) ;;
  *) echo "install.sh: PREFIX must be an absolute path, got '$PREFIX'" >&2; exit 2 ;;
esac
case $PREFIX in
  *[!A-Za-z0-9/._+-]*) echo "install.sh: PREFIX '$PREFIX' has characters unsafe in a unit file" >&2; exit 2 ;;
esac
if [ ! -x "$PREFIX/bin/cai" ]; then
  echo "install.sh: $PREFIX/bin/cai not found: install the suite first (python3 -m venv $PREFIX &&" \
       "$PREFIX/bin/pip install <repository>), or set PREFIX" >&2
  exit 1
fi

mkdir -p "$UNIT_DIR"
for unit in cai.target cai-attestation-agent.service cai-data-hub.service cai-cachefs.service cai-gateway.service; do
  # The committed units name /opt/cai/bin/cai; this is the only substitution.
  sed "s#/opt/cai/bin/cai#$PREFIX/bin/cai#g" "$here/$unit" > "$UNIT_DIR/$unit.tmp"
  chmod 0644 "$UNIT_DIR/$unit.tmp"
  mv "$UNIT_DIR/$unit.tmp" "$UNIT_DIR/$unit"
  echo "installed $UNIT_DIR/$unit"
done

# cai.env holds object-storage credentials: root-only.
mkdir -p "$CONF_DIR"
chmod 0700 "$CONF_DIR"
if [ ! -e "$CONF_DIR/cai.env" ]; then
  (umask 077 && cp "$here/../compose/cai.env.example" "$CONF_DIR/cai.env")
  echo "created $CONF_DIR/cai.env from compose/cai.env.example: edit it before starting cai.target"
fi

if [ "${NO_RELOAD:-0}" != 1 ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
fi
