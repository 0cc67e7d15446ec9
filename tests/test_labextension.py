"""The JupyterLab extension: its front-end tests (vitest, in extension/) against the shared
Jupyter server, and the package: a wheel of this checkout installed into a fresh virtualenv
makes ``jupyter labextension list`` show the extension enabled.

Both need the built extension (scripts/build-labextension.sh, run by scripts/bootstrap.sh).
The browser test of the sidebar is tests/test_labextension_browser.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from test_jupyter import LABEXTENSION, ROOT, JupyterServer, jupyter, proxied_model  # noqa: F401 - fixtures

EXTENSION = ROOT / "extension"

needs_build = pytest.mark.skipif(
    not (LABEXTENSION / "package.json").exists() or not (EXTENSION / "node_modules").is_dir(),
    reason="the JupyterLab extension is not built: run scripts/build-labextension.sh")


@needs_build
def test_frontend_tests_pass_against_the_server(jupyter: JupyterServer, proxied_model: str) -> None:  # noqa: F811
    npx = shutil.which("npx")
    assert npx, "npx is missing although extension/node_modules exists: install Node.js 20"
    env = {**os.environ, "XNB_TEST_JUPYTER_URL": jupyter.url, "XNB_TEST_JUPYTER_TOKEN": jupyter.token,
           "XNB_TEST_MODEL": proxied_model, "CI": "true", "NO_COLOR": "1"}
    result = subprocess.run([npx, "vitest", "run"], cwd=EXTENSION, env=env, capture_output=True, text=True,
                            timeout=240)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert "skipped" not in out, out[-4000:]  # the server tests ran too


@needs_build
def test_wheel_installs_the_labextension_enabled(tmp_path: Path) -> None:
    """``pip wheel --no-deps`` of this checkout (reusing the built labextension), installed with
    ``--no-deps`` into a fresh virtualenv that sees this environment's packages (jupyterlab)
    through a .pth file: the cheapest honest stand-in for ``pip install xnb[jupyter]``."""
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheels), str(ROOT)], check=True, cwd=tmp_path, timeout=300)
    (wheel,) = wheels.glob("xnb-*.whl")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (Path(site) / "_shared_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "PYTHON"))}
    env.update(HOME=str(tmp_path / "home"), JUPYTER_PLATFORM_DIRS="1")
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--disable-pip-version-check", str(wheel)],
                   check=True, env=env, cwd=tmp_path, timeout=300)

    installed = venv / "share" / "jupyter" / "labextensions" / "xnb-labextension"
    assert (installed / "package.json").is_file() and list((installed / "static").glob("remoteEntry.*.js"))
    listing = subprocess.run([python, "-m", "jupyterlab.labextensions", "list"], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
    out = listing.stdout + listing.stderr
    assert listing.returncode == 0, out
    lines = [line for line in out.splitlines() if "xnb-labextension" in line]
    assert lines and "enabled" in lines[0] and "OK" in lines[0] and "(python, xnb)" in lines[0], out
    assert str(venv / "share" / "jupyter" / "labextensions") in out, out
    server = subprocess.run([python, "-m", "jupyter_server.extension.serverextension", "list"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert "xnb.jupyter" in server.stdout + server.stderr and "enabled" in server.stdout + server.stderr
