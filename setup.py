"""Data files of the xnb package: the Jupyter server extension's config and the prebuilt
JupyterLab extension (xnb/labextension, built from extension/ by scripts/build-labextension.sh).

Everything else is in pyproject.toml.  The labextension is rebuilt here when its sources
are newer than the output and Node.js is at hand; a build without it (no Node.js, no
built output) warns loudly and goes on, since an editable install does not use data
files anyway.  XNB_REQUIRE_LABEXTENSION=1 turns that warning into an error (release wheels).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
LABEXT = ROOT / "xnb" / "labextension"
DEST = "share/jupyter/labextensions/xnb-labextension"


def labextension_files() -> list[tuple[str, list[str]]]:
    script = ROOT / "scripts" / "build-labextension.sh"
    if os.environ.get("XNB_SKIP_LABEXTENSION") == "1":  # e.g. the vLLM worker's environment
        return []
    if script.exists() and (ROOT / "extension").is_dir():
        subprocess.run(["bash", str(script)], cwd=ROOT)  # a no-op when the output is up to date
    if not (LABEXT / "package.json").exists():
        message = ("xnb/labextension is missing, so this build has no JupyterLab sidebar: run "
                   "scripts/build-labextension.sh (Node.js 20 + npm, and jupyterlab installed) first")
        if os.environ.get("XNB_REQUIRE_LABEXTENSION") == "1":
            sys.exit(f"xnb: {message}")
        print(f"WARNING xnb: {message}", file=sys.stderr)
        return []
    out: dict[str, list[str]] = {}
    for path in sorted(LABEXT.rglob("*")):
        if path.is_file():
            rel = path.relative_to(LABEXT)
            out.setdefault(f"{DEST}/{rel.parent}".rstrip("/."), []).append(str(path.relative_to(ROOT)))
    return sorted(out.items())


setup(
    data_files=[
        # Enables the Jupyter server extension on install (jupyter server extension list shows it).
        ("etc/jupyter/jupyter_server_config.d", ["jupyter-config/jupyter_server_config.d/xnb.json"]),
        *labextension_files(),
    ],
)
