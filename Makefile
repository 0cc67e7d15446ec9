# The two commands a newcomer needs (see README.md).
.PHONY: run test test-all lint bench

run:  ## set up .venv and serve SmolLM2 at http://127.0.0.1:9997 (Ctrl-C stops)
	scripts/bootstrap.sh run
	.venv/bin/xnb local --launch smollm2-135m-instruct

test:  ## set up everything the tests need (scripts/setup-tests.sh), lint, run the default suite
	scripts/setup-tests.sh
	$(MAKE) lint
	.venv/bin/pytest

test-all:  ## the same, with the slow suites too
	scripts/setup-tests.sh
	$(MAKE) lint
	.venv/bin/pytest -m "slow or not slow"

lint:  ## ruff everywhere, mypy strict on the boundary (xnb/protocol.py) and the public API
	.venv/bin/ruff check xnb tests benchmarks scripts
	.venv/bin/mypy
