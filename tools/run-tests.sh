#!/usr/bin/env bash
# Run the test suite: everything but the root-only tests as the unprivileged user, then the
# root-only set as root.  Needs setup-host.sh and install-env.sh first (the Makefile's
# `test` target runs all three).  Extra arguments go to pytest.
set -euo pipefail

TEST_USER="${HUTCH_TEST_USER:-hutchtest}"
ROOT="${HUTCH_CI_ROOT:-/var/lib/hutch-ci}"
HOME_DIR="$(getent passwd "$TEST_USER" | cut -d: -f6)"
cd "$ROOT/src"

# CPythons that Debian does not package, for the python-build-standalone offline path
# (tests/integration/test_python_versions.py makes its archives from them): pyenv's where
# the host has them, copied once where the test user can read them.
PYTHONS="$ROOT/test-pythons"
mkdir -p "$PYTHONS"
for prefix in /root/.pyenv/versions/3.10.* /root/.pyenv/versions/3.12.*; do
  [ -x "$prefix/bin/python3" ] || continue
  [ -d "$PYTHONS/${prefix##*/}" ] || cp -a "$prefix" "$PYTHONS/"
done
chmod -R a+rX "$PYTHONS"

echo "== tests as the unprivileged user $TEST_USER"
runuser -u "$TEST_USER" -- env -i HOME="$HOME_DIR" PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin \
  LANG=C.UTF-8 HUTCH_TEST_PYTHONS="$PYTHONS" "$ROOT/venv/bin/python" -m pytest -p no:cacheprovider -m "not root" "$@" tests

echo "== tests as root"
env -i HOME=/root PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin LANG=C.UTF-8 \
  "$ROOT/venv/bin/python" -m pytest -p no:cacheprovider -m root "$@" tests
