#!/usr/bin/env bash
# Build the Python environment the unprivileged user runs hutch from, in a place that user
# can read (CI clones may sit under /root, and the machine's default python3 may live there
# too): a copy of the source and a venv made from Debian's /usr/bin/python3.  Run as root.
# Prints nothing but progress; the paths are fixed so the Makefile can use them.
set -euo pipefail

TEST_USER="${HUTCH_TEST_USER:-hutchtest}"
ROOT="${HUTCH_CI_ROOT:-/var/lib/hutch-ci}"
SRC="$ROOT/src"
VENV="$ROOT/venv"
here="$(cd "$(dirname "$0")/.." && pwd)"

mkdir -p "$ROOT"
chmod 0755 "$ROOT"
rsync -a --delete --exclude .venv --exclude .git --exclude '__pycache__' \
  --exclude '.mypy_cache' --exclude '.ruff_cache' --exclude '.pytest_cache' "$here/" "$SRC/"
chown -R "$TEST_USER:" "$SRC"
if [ ! -x "$VENV/bin/python" ]; then
  install -d -o "$TEST_USER" "$VENV"
  runuser -u "$TEST_USER" -- /usr/bin/python3 -m venv "$VENV"
fi
runuser -u "$TEST_USER" -- env HOME="$(getent passwd "$TEST_USER" | cut -d: -f6)" \
  "$VENV/bin/pip" install -q --disable-pip-version-check -e "$SRC[test,bench]"
# An editable install leaves out what setup.py adds to a wheel: the HUTCH_AS_MODAL hook.
install -m 0644 -o "$TEST_USER" "$SRC/hutch-as-modal.pth" \
  "$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/"
echo "install-env: $VENV ready for $TEST_USER (source copy: $SRC)"
