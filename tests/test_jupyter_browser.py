"""JupyterLab in a real browser (Debian's chromium driven by playwright): a notebook
kernel started by the server displays the xnb panel, whose parts render and work.

Needs ``/usr/bin/chromium`` and the ``playwright`` package (scripts/install-browser.sh);
skipped, saying so, where they are missing.  The screenshot lands in the test's tmp dir.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from test_jupyter import JupyterServer, shared_server

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (scripts/install-browser.sh)")
if not shutil.which(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is missing: run scripts/install-browser.sh", allow_module_level=True)


@pytest.fixture(scope="session")
def jupyter(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> JupyterServer:
    return shared_server(tmp_path_factory, request)


@pytest.fixture(scope="module")
def page(jupyter: JupyterServer) -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            yield context.new_page()
        finally:
            browser.close()


def test_lab_renders_the_xnb_panel(jupyter: JupyterServer, page: Any, tmp_path: Path) -> None:
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell("import xnb.jupyter\npanel = xnb.jupyter.panel()\npanel")],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(nb, jupyter.notebook_dir / "panel.ipynb")

    page.goto(f"{jupyter.url}/lab/tree/panel.ipynb?token={jupyter.token}&reset", timeout=120_000)
    # The notebook is open and its kernel idle, then run the cell.
    page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=120_000)
    page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=120_000)  # the status bar
    page.locator(".jp-Notebook .jp-Cell .jp-InputArea-editor").first.click()
    page.keyboard.press("Shift+Enter")

    panel = page.locator(".xnb-panel")
    panel.wait_for(state="visible", timeout=120_000)
    for title in ("Models", "Launch", "Catalog", "Cluster", "Chat"):
        assert panel.get_by_role("tab", name=title).is_visible(), title
    assert panel.locator(".xnb-refresh").is_visible()
    assert "No models running" in panel.locator(".xnb-models").inner_text() or panel.locator(".xnb-terminate").count()

    panel.get_by_role("tab", name="Catalog").click()
    options = panel.locator(".xnb-catalog-list option")
    options.first.wait_for(timeout=30_000)
    assert "smollm2-135m-instruct" in " ".join(options.all_inner_texts())
    panel.get_by_role("tab", name="Cluster").click()
    workers = panel.locator(".xnb-cluster table tr")
    workers.nth(1).wait_for(timeout=30_000)
    assert workers.count() == 2 and "1 worker(s)" in panel.locator(".xnb-cluster").inner_text()

    # Launch from the form: the progress bar, the models table and the terminate button are
    # updated by the panel's background threads while the kernel sits idle.
    panel.get_by_role("tab", name="Launch").click()
    form = panel.locator(".xnb-launch-form")
    assert form.locator("select").first.input_value() == "smollm2-135m-instruct"
    form.get_by_placeholder("the model's name").fill("br-smol")
    form.locator(".xnb-launch").click()
    form.get_by_text("br-smol is ready").wait_for(timeout=120_000)
    page.screenshot(path=str(tmp_path / "xnb-panel-launched.png"))
    panel.get_by_role("tab", name="Models").click()
    row = panel.locator(".xnb-models .widget-hbox", has_text="br-smol")
    row.get_by_text("ready").wait_for(timeout=30_000)
    page.screenshot(path=str(tmp_path / "xnb-panel.png"), full_page=True)
    assert (tmp_path / "xnb-panel.png").stat().st_size > 10_000
    row.locator(".xnb-terminate").click()
    row.wait_for(state="detached", timeout=60_000)
    assert "br-smol" not in {m["uid"] for m in jupyter.client().get("/xnb/api/models").json()["data"]}
