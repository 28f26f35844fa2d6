#!/usr/bin/env bash
# The main job, from a fresh Debian 12 machine, as root: set up the host, install hutch for
# the unprivileged user, and run a rootless sandbox that prints from Python inside it.
set -euo pipefail
cd "$(dirname "$0")/.."
TEST_USER="${HUTCH_TEST_USER:-hutchtest}"
ROOT="${HUTCH_CI_ROOT:-/var/lib/hutch-ci}"
tools/setup-host.sh
tools/install-env.sh
cd "$ROOT/src"
runuser -u "$TEST_USER" -- env -i HOME="$(getent passwd "$TEST_USER" | cut -d: -f6)" \
  PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin LANG=C.UTF-8 \
  "$ROOT/venv/bin/hutch" run -- python3 -c \
  "import os, platform; print(f'hello from a hutch sandbox: Python {platform.python_version()}, uid {os.getuid()}, host {platform.node()}')"
