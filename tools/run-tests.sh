#!/usr/bin/env bash
# Run the test suite: everything but the root-only tests as the unprivileged user, then the
# root-only set as root.  Needs setup-host.sh and install-env.sh first (the Makefile's
# `test` target runs all three).  Extra arguments go to pytest.
set -euo pipefail

TEST_USER="${HUTCH_TEST_USER:-hutchtest}"
ROOT="${HUTCH_CI_ROOT:-/var/lib/hutch-ci}"
HOME_DIR="$(getent passwd "$TEST_USER" | cut -d: -f6)"
cd "$ROOT/src"

echo "== tests as the unprivileged user $TEST_USER"
runuser -u "$TEST_USER" -- env -i HOME="$HOME_DIR" PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin \
  LANG=C.UTF-8 "$ROOT/venv/bin/python" -m pytest -p no:cacheprovider -m "not root" "$@" tests

echo "== tests as root"
env -i HOME=/root PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin LANG=C.UTF-8 \
  "$ROOT/venv/bin/python" -m pytest -p no:cacheprovider -m root "$@" tests
