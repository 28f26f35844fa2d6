#!/usr/bin/env bash
# The test command, from a fresh Debian 12 machine, as root: set up the host, install hutch
# for the unprivileged user, run the suite as that user and then the root-only set as root.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup-host.sh
tools/install-env.sh
tools/run-tests.sh "$@"
