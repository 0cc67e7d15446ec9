#!/usr/bin/env bash
# Build the JupyterLab extension: extension/ (TypeScript) -> xnb/labextension/ (the prebuilt
# labextension the Python package ships). Skipped when the output is newer than the sources.
#
# Needs Node.js >= 20 with npm (the npm registry is the only download: `npm ci` from the
# committed package-lock.json) and `jupyter-builder` (installed with jupyterlab): taken
# from $JUPYTER_BUILDER, else PATH, else .venv/bin.
set -euo pipefail
cd "$(dirname "$0")/.."

out=xnb/labextension/package.json
sources=(extension/src extension/style extension/package.json extension/package-lock.json
         extension/tsconfig.json extension/install.json)
if [ -f "$out" ] && [ -z "$(find "${sources[@]}" -newer "$out" -print -quit)" ]; then
  exit 0
fi
command -v npm >/dev/null || {
  echo "build-labextension: npm is missing: install Node.js 20 (apt-get install nodejs npm) and rerun" >&2
  exit 1
}
builder=${JUPYTER_BUILDER:-$(command -v jupyter-builder || echo "$PWD/.venv/bin/jupyter-builder")}
[ -x "$builder" ] || {
  echo "build-labextension: jupyter-builder is missing: pip install jupyterlab (scripts/bootstrap.sh does)" >&2
  exit 1
}
cd extension
# node_modules/.package-lock.json is npm's record of what it installed: reinstall when the lock changed.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi
npx tsc --sourceMap false
"$builder" build .
cp install.json ../xnb/labextension/install.json
touch ../"$out"
echo "build-labextension: built xnb/labextension" >&2
