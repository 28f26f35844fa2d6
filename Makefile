# Shortcuts for the scripts in tools/ (the README's commands work without make).
.PHONY: demo test lint bench

demo:
	tools/demo.sh

test:
	tools/test.sh

lint:
	.venv/bin/ruff check hutch tests benchmarks && .venv/bin/mypy

bench:
	tools/setup-host.sh && tools/install-env.sh && cd /var/lib/hutch-ci/src && \
	runuser -u $${HUTCH_TEST_USER:-hutchtest} -- /var/lib/hutch-ci/venv/bin/python -m benchmarks --runs 20
