#!/usr/bin/env bash
# Everything the test suite needs on a fresh machine (what `make test` runs first):
#   * .venv with xnb and the test tools (scripts/bootstrap.sh test; builds llama-cpp-python once),
#   * .venv-vllm for the vLLM worker tests (scripts/bootstrap-vllm.sh),
#   * iproute2 for the multi-host tests and Debian's chromium for the browser tests (apt).
# The vLLM environment and the apt installs are mostly downloads, so they run beside the
# llama.cpp compile instead of after it. Each step skips itself when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

logs=$(mktemp -d)
# XNB_SKIP_LABEXTENSION: setup.py (run by its editable install) must not build the JupyterLab
# extension at the same time as scripts/bootstrap.sh does; the vLLM worker does not need it.
XNB_SKIP_LABEXTENSION=1 scripts/bootstrap-vllm.sh >"$logs/vllm.log" 2>&1 &
vllm=$!
{ scripts/install-netns-tools.sh && scripts/install-browser.sh; } >"$logs/system.log" 2>&1 &
system=$!

scripts/bootstrap.sh test

status=0
for job in "vllm:$vllm" "system:$system"; do
  name=${job%%:*}
  if ! wait "${job#*:}"; then
    echo "setup-tests: the $name step failed:" >&2
    status=1
  fi
  cat "$logs/$name.log" >&2
done
rm -rf "$logs"
exit $status
