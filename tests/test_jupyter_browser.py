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
from support import wait_until
from test_jupyter import JupyterServer, shared_server

CHROMIUM = "/usr/bin/chromium"
#: Screenshots are kept here (git-ignored) for a look after the run.
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
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
    assert "run this cell again" not in panel.inner_text()  # the live widget, not its placeholder

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
    assert form.locator("select").first.input_value() == "smollm2-135m-instruct  (packaged)"  # starts offline
    form.get_by_placeholder("the model's name").fill("br-smol")
    form.locator(".xnb-launch").click()
    form.get_by_text("br-smol is ready").wait_for(timeout=120_000)
    page.screenshot(path=str(tmp_path / "xnb-panel-launched.png"))
    panel.get_by_role("tab", name="Models").click()
    grid = panel.locator(".xnb-models-grid")
    uid_cell = grid.locator(".xnb-models-uid", has_text="br-smol")
    uid_cell.wait_for(timeout=30_000)
    grid.get_by_text("ready", exact=True).first.wait_for(timeout=30_000)
    # Headers sit over their columns: each header starts where the first row's cell starts,
    # and no cell cuts its text off (engine names, worker addresses).
    headers = grid.locator(".xnb-models-header")
    cells = grid.locator(".xnb-cell:not(.xnb-models-header)")
    for i in range(7):
        head, cell = headers.nth(i).bounding_box(), cells.nth(i).bounding_box()
        assert abs(head["x"] - cell["x"]) < 2, (i, head, cell)
    terminate, box = grid.locator(".xnb-terminate").first.bounding_box(), grid.bounding_box()
    assert terminate["x"] + terminate["width"] <= box["x"] + box["width"] + 1, (terminate, box)  # not cut off
    clipped = cells.evaluate_all("cs => cs.filter(c => c.scrollWidth > c.clientWidth + 1).map(c => c.innerText)")
    assert clipped == [], clipped
    page.screenshot(path=str(tmp_path / "xnb-panel.png"), full_page=True)
    assert (tmp_path / "xnb-panel.png").stat().st_size > 10_000

    # The chat box sends on Ctrl+Enter (Enter alone is a new line).
    panel.get_by_role("tab", name="Chat").click()
    chat = panel.locator(".xnb-chat")
    chat.locator("select").first.select_option("br-smol")
    box = chat.locator(".xnb-input textarea")
    box.fill("Say hello.")
    box.press("Control+Enter")
    chat.locator(".xnb-transcript").get_by_text("assistant").wait_for(timeout=90_000)
    assert "Say hello." in chat.locator(".xnb-transcript").inner_text()
    page.screenshot(path=str(tmp_path / "xnb-panel-chat.png"))

    # Terminate asks first; the model is only gone after the confirmation.
    panel.get_by_role("tab", name="Models").click()
    grid.locator(".xnb-terminate").first.click()
    confirm = grid.locator(".xnb-confirm-terminate")
    confirm.wait_for(timeout=30_000)
    assert "br-smol" in {m["uid"] for m in jupyter.client().get("/xnb/api/models").json()["data"]}
    confirm.click()
    wait_until(lambda: "br-smol" not in {m["uid"] for m in jupyter.client().get("/xnb/api/models").json()["data"]},
               timeout=60, what="the model to be terminated")
    uid_cell.wait_for(state="detached", timeout=60_000)
    keep = ARTIFACTS / "test_jupyter_browser"
    keep.mkdir(parents=True, exist_ok=True)
    for shot in tmp_path.glob("*.png"):
        shutil.copy(shot, keep / shot.name)
