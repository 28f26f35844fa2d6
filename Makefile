# The two commands of the README, for a fresh Debian 12 machine, as root:
#   make demo   set up the host and run a sandbox that prints from Python
#   make test   set up the host and run the whole test suite (rootless, then root)
TEST_USER ?= hutchtest
CI_ROOT ?= /var/lib/hutch-ci
RUN_AS_USER = runuser -u $(TEST_USER) -- env -i HOME=$$(getent passwd $(TEST_USER) | cut -d: -f6) \
	PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin LANG=C.UTF-8

.PHONY: setup demo test lint bench

setup:
	HUTCH_TEST_USER=$(TEST_USER) tools/setup-host.sh
	HUTCH_TEST_USER=$(TEST_USER) HUTCH_CI_ROOT=$(CI_ROOT) tools/install-env.sh

demo: setup
	cd $(CI_ROOT)/src && $(RUN_AS_USER) $(CI_ROOT)/venv/bin/hutch run -- \
		python3 -c "import platform, os; print(f'hello from a hutch sandbox: Python {platform.python_version()} as uid {os.getuid()} on {platform.node()}')"

test: setup
	HUTCH_TEST_USER=$(TEST_USER) HUTCH_CI_ROOT=$(CI_ROOT) tools/run-tests.sh

lint: setup
	cd $(CI_ROOT)/src && $(CI_ROOT)/venv/bin/ruff check hutch tests benchmarks && \
		$(CI_ROOT)/venv/bin/mypy

bench: setup
	cd $(CI_ROOT)/src && $(RUN_AS_USER) $(CI_ROOT)/venv/bin/python -m benchmarks --runs 20
