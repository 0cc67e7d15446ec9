"""Data files of the xnb package: the Jupyter server extension's config and the prebuilt
JupyterLab extension (xnb/labextension, built from extension/ by scripts/build-labextension.sh).

Everything else is in pyproject.toml.  A wheel built without the labextension would
install a Jupyter server extension with no sidebar, so building one fails instead
unless XNB_SKIP_LABEXTENSION=1 says that is what you want.
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
    if os.environ.get("XNB_SKIP_LABEXTENSION") == "1":
        return []
    script = ROOT / "scripts" / "build-labextension.sh"
    if script.exists() and (ROOT / "extension").is_dir():
        # Rebuilds only when the sources are newer than the output.
        result = subprocess.run(["bash", str(script)], cwd=ROOT)
        if result.returncode != 0 and not (LABEXT / "package.json").exists():
            sys.exit("xnb: building the JupyterLab extension failed (see above); set XNB_SKIP_LABEXTENSION=1 "
                     "to build without it")
    if not (LABEXT / "package.json").exists():
        sys.exit("xnb: xnb/labextension is missing: run scripts/build-labextension.sh (Node.js 20 + npm), "
                 "or set XNB_SKIP_LABEXTENSION=1 to build without the JupyterLab extension")
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
