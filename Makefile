# The two commands a newcomer needs (see README.md).
.PHONY: run test test-all bench

run:  ## set up .venv and serve SmolLM2 at http://127.0.0.1:9997 (Ctrl-C stops)
	scripts/bootstrap.sh run
	.venv/bin/xnb local --launch smollm2-135m-instruct

test:  ## set up .venv (and chromium for the browser test) and run the default test suite
	scripts/bootstrap.sh test
	scripts/install-browser.sh
	scripts/install-netns-tools.sh
	.venv/bin/pytest

test-all:  ## also the slow suites
	scripts/bootstrap.sh test
	scripts/install-browser.sh
	scripts/install-netns-tools.sh
	.venv/bin/pytest -m "slow or not slow"
