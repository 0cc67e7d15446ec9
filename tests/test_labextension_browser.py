"""The xnb JupyterLab sidebar in a real browser (Debian's chromium driven by playwright)
against the shared Jupyter server: open it, find SmolLM2 in the catalog, launch it and
follow its progress to ``ready``, insert the ``openai`` snippet into a new notebook and
run it, chat in the chat tab, terminate the model; an impossible launch shows its
error in place; and the xnb panel's output says "run this cell again" once its kernel is gone.  Screenshots of each step (light and dark theme) go to tests/artifacts/labextension/.

Needs the built extension (scripts/build-labextension.sh), ``/usr/bin/chromium`` and the
``playwright`` package (scripts/install-browser.sh); skipped, saying so, where they are missing.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from support import wait_until
from test_jupyter import LABEXTENSION, JupyterServer, shared_server
from test_jupyter_browser import CHROMIUM, CHROMIUM_ARGS

from xnb.jupyter.widgets import PANEL_MIME, PLACEHOLDER

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (scripts/install-browser.sh)")
if not shutil.which(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is missing: run scripts/install-browser.sh", allow_module_level=True)
if not (LABEXTENSION / "package.json").exists():
    pytest.skip("xnb/labextension is not built: run scripts/build-labextension.sh", allow_module_level=True)

ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "labextension"
SMOL = "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def jupyter(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> JupyterServer:
    return shared_server(tmp_path_factory, request)


@pytest.fixture(scope="module")
def page(jupyter: JupyterServer) -> Iterator[Any]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            page = context.new_page()
            page.goto(f"{jupyter.url}/lab?token={jupyter.token}&reset", timeout=120_000)
            page.locator("#jp-main-dock-panel").wait_for(timeout=120_000)
            yield page
        finally:
            browser.close()


@pytest.fixture(autouse=True)
def final_screenshot(page: Any, request: pytest.FixtureRequest) -> Iterator[None]:
    """How the page looked when the test ended (the place to look when one fails)."""
    yield
    snap(page, f"end-{request.node.name}")


def snap(page: Any, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def open_sidebar(page: Any) -> Any:
    sidebar = page.locator("#xnb-sidebar")
    if not sidebar.is_visible():
        page.locator('.jp-SideBar li[data-id="xnb-sidebar"]').click()
    sidebar.wait_for(state="visible", timeout=30_000)
    return sidebar


def set_theme(page: Any, theme: str) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text="Settings").click()
    page.locator(".lm-Menu-itemLabel", has_text="Theme").first.hover()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(f"^{re.escape(theme)}$")).click()
    expect_light = "Light" in theme
    page.wait_for_function(f"document.body.dataset.jpThemeLight === '{str(expect_light).lower()}'", timeout=30_000)


def test_sidebar_launch_use_chat_terminate(jupyter: JupyterServer, page: Any) -> None:
    sidebar = open_sidebar(page)
    sidebar.locator(".xnb-conn", has_text="updated").wait_for(timeout=30_000)
    assert page.locator(".xnb-statusbar").inner_text().startswith("xnb:")
    snap(page, "01-sidebar")

    sidebar.get_by_role("tab", name="Cluster").click()
    workers = sidebar.locator(".xnb-workers tbody tr")
    workers.first.wait_for(timeout=30_000)
    assert workers.count() == 1 and "1 worker(s)" in sidebar.locator(".xnb-cluster").inner_text()
    snap(page, "02-cluster")

    # The catalog: search, then the packaged SmolLM2's launch form.
    sidebar.get_by_role("tab", name="Catalog").click()
    sidebar.locator(".xnb-catalog-search").fill("smollm2")
    entry = sidebar.locator(f'.xnb-catalog-entry[data-name="{SMOL}"]')
    entry.wait_for(timeout=30_000)
    sidebar.locator(".xnb-catalog-type").select_option("embedding")
    entry.wait_for(state="detached", timeout=10_000)
    sidebar.locator(".xnb-catalog-type").select_option("language model")
    entry.locator(".xnb-open-launch").click()
    form = entry.locator(".xnb-launch-form")
    form.locator(".xnb-launch-engine option", has_text="llama-cpp").wait_for(state="attached", timeout=30_000)
    form.locator(".xnb-launch-uid").fill("lab-smol")
    snap(page, "03-catalog-launch-form")
    form.locator(".xnb-launch").click()
    phase = form.locator(".xnb-launch-phase")
    phase.wait_for(timeout=30_000)
    seen = {phase.inner_text()}
    page.wait_for_function(
        "document.querySelector('.xnb-launch-form .xnb-launch-phase').textContent.includes('is ready')",
        timeout=180_000)
    seen.add(phase.inner_text())
    assert "lab-smol is ready" in seen, seen
    assert form.locator(".xnb-launch-error").is_hidden()
    snap(page, "04-launched")

    sidebar.get_by_role("tab", name="Models").click()
    card = sidebar.locator('.xnb-model[data-uid="lab-smol"]')
    card.locator(".xnb-status-ready").first.wait_for(timeout=30_000)
    assert "llama-cpp" in card.inner_text() and "replica 0" in card.inner_text()
    card.locator(".xnb-live").wait_for(timeout=30_000)  # live counters of the ready replica
    page.wait_for_function("document.querySelector('.xnb-statusbar').textContent === 'xnb: 1 ready'",
                           timeout=60_000)
    card.locator(".xnb-events-toggle").click()
    card.locator(".xnb-events .xnb-event").first.wait_for(timeout=30_000)
    assert "ready" in card.locator(".xnb-events").inner_text()
    snap(page, "05-models")
    card.locator(".xnb-events-toggle").click()
    card.locator(".xnb-events").wait_for(state="detached", timeout=10_000)

    # "Use it": the openai snippet into a new notebook, run there through Jupyter's proxy.
    card.locator(".xnb-snippet-openai").click()
    cell = page.locator(".jp-NotebookPanel .jp-Cell").first
    cell.wait_for(timeout=60_000)
    page.wait_for_function(
        "[...document.querySelectorAll('.jp-NotebookPanel .jp-Cell .cm-content')]"
        ".some(e => e.textContent.includes('xnb/v1'))", timeout=30_000)
    source = cell.locator(".cm-content").inner_text()
    assert f"{jupyter.url}/xnb/v1" in source and '"lab-smol"' in source
    page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=120_000)
    cell.locator(".cm-content").click()
    page.keyboard.press("Shift+Enter")
    output = cell.locator(".jp-OutputArea-output")
    output.first.wait_for(timeout=120_000)
    page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=120_000)
    text = output.first.inner_text()
    assert text.strip() and "Error" not in text and "Traceback" not in text, text
    snap(page, "06-notebook-openai")

    # The chat tab streams an answer.
    sidebar.get_by_role("tab", name="Chat").click()
    chat = sidebar.locator(".xnb-chat")
    chat.locator(".xnb-chat-model").select_option("lab-smol")
    chat.locator(".xnb-chat-max-tokens").fill("24")  # a short answer: the machine may be busy
    chat.locator(".xnb-chat-input").fill("What is the capital of France?")
    chat.locator(".xnb-chat-send").click()
    answer = chat.locator(".xnb-msg-assistant:not(.xnb-msg-streaming)")
    answer.first.wait_for(timeout=120_000)
    assert answer.first.inner_text().strip()
    assert chat.locator(".xnb-chat-error").is_hidden()
    snap(page, "07-chat")

    # Terminate, confirmed in a dialog.
    sidebar.get_by_role("tab", name="Models").click()
    card.locator(".xnb-terminate").click()
    dialog = page.locator(".jp-Dialog")
    dialog.get_by_text("Terminate lab-smol?").wait_for(timeout=10_000)
    snap(page, "08-terminate-confirm")
    dialog.locator("button", has_text="Terminate").click()
    card.wait_for(state="detached", timeout=60_000)
    assert "lab-smol" not in {m["uid"] for m in jupyter.client().get("/xnb/api/models").json()["data"]}
    snap(page, "09-terminated")


def test_impossible_launch_shows_error_in_place_dark_theme(jupyter: JupyterServer, page: Any) -> None:
    sidebar = open_sidebar(page)
    set_theme(page, "JupyterLab Dark")
    try:
        sidebar.get_by_role("tab", name="Catalog").click()
        sidebar.locator(".xnb-catalog-search").fill(SMOL)
        sidebar.locator(".xnb-catalog-type").select_option("")
        entry = sidebar.locator(f'.xnb-catalog-entry[data-name="{SMOL}"]')
        entry.wait_for(timeout=30_000)
        form = entry.locator(".xnb-launch-form")
        if not form.is_visible():
            entry.locator(".xnb-open-launch").click()
        form.locator(".xnb-launch-uid").fill("lab-impossible")
        form.locator(".xnb-launch-gpus").fill("64")  # no worker here has a GPU
        form.locator(".xnb-launch").click()
        error = form.locator(".xnb-launch-error")
        error.wait_for(state="visible", timeout=60_000)
        message = error.inner_text()
        assert "GPU" in message, message
        assert form.locator(".xnb-progress-failed").count() == 1
        snap(page, "10-launch-error-dark")
        sidebar.get_by_role("tab", name="Cluster").click()
        snap(page, "11-cluster-dark")
        with jupyter.client() as http:
            if "lab-impossible" in {m["uid"] for m in http.get("/xnb/api/models").json()["data"]}:
                http.delete("/xnb/api/models/lab-impossible")  # a record in state error
    finally:
        set_theme(page, "JupyterLab Light")  # the shared server keeps its settings


# A cell's CodeMirror lines, each as [[token text, has a highlight class], ...] (plain text as None).
LINE_TOKENS_JS = """cell => [...cell.querySelectorAll('.cm-line')].map(line => [...line.childNodes].map(n =>
    n.nodeType === Node.TEXT_NODE ? [n.textContent, null] : [n.textContent, n.className !== '']))"""


def test_cell_magic_body_is_plain_text(jupyter: JupyterServer, page: Any) -> None:
    """``%%xnb chat`` / ``%%xnb complete`` bodies get no Python colours; Python cells keep theirs."""
    body = 'def for in import "quoted"'
    notebook = {
        "cells": [{"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [], "source": s}
                  for s in (f"def f(x):\n    return {body!r}", f"%%xnb chat lab-smol\n{body}", "")],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"},
                     "language_info": {"name": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }
    (jupyter.notebook_dir / "cellmagic.ipynb").write_text(json.dumps(notebook))
    # reset: only this notebook open (an earlier test leaves another one).
    page.goto(f"{jupyter.url}/lab/tree/cellmagic.ipynb?token={jupyter.token}&reset", timeout=120_000)
    cells = page.locator(".jp-NotebookPanel .jp-CodeCell")
    cells.nth(2).wait_for(timeout=120_000)
    # Python highlighting is applied asynchronously: wait until the Python cell has its keyword span.
    page.wait_for_function("c => [...c.querySelectorAll('.cm-line span')].some(s => s.textContent === 'def')",
                           arg=cells.nth(0).element_handle(), timeout=30_000)
    # The third cell typed by hand: the language switches as its first line becomes the magic.
    cells.nth(2).locator(".cm-content").click()
    cells.nth(2).locator(".cm-editor.cm-focused").wait_for(timeout=10_000)
    page.keyboard.type(f"%%xnb complete lab-smol\n{body}")
    page.wait_for_function("c => c.querySelectorAll('.cm-line').length === 2", arg=cells.nth(2).element_handle())
    snap(page, "12-cell-magic-plain-text")

    python = cells.nth(0).evaluate(LINE_TOKENS_JS)
    highlighted = {text for line in python for text, cls in line if cls}
    assert {"def", "return", repr(body)} <= highlighted, python
    for i in (1, 2):
        magic_line, body_line = cells.nth(i).evaluate(LINE_TOKENS_JS)
        assert body_line == [[body, None]], (i, body_line)  # one plain text node, no span
        # The magic line as Python shows it: `%%xnb` uncoloured, the `-` of lab-smol an operator.
        assert magic_line[0][0].startswith("%%xnb") and not magic_line[0][1], (i, magic_line)
        assert ["-", True] in magic_line, (i, magic_line)


def test_panel_after_a_kernel_restart_says_run_again(jupyter: JupyterServer, page: Any) -> None:
    """Issue #17 (13): once the panel's kernel is gone (restarted here; then the notebook reopened)
    its output says how to get it back instead of ipywidgets' broken links or "Error displaying
    widget"; running the cell again brings the live panel back."""
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell("import xnb.jupyter\nxnb.jupyter.panel()")],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(nb, jupyter.notebook_dir / "restart.ipynb")
    url = f"{jupyter.url}/lab/tree/restart.ipynb?token={jupyter.token}&reset"
    try:
        page.goto(url, timeout=120_000)
        output = page.locator(".jp-Notebook .jp-Cell").first.locator(".jp-Cell-outputArea")
        hint = output.locator(".xnb-panel-hint")
        run_cell(page)
        page.locator(".xnb-panel").wait_for(state="visible", timeout=120_000)
        assert hint.is_hidden()  # the live panel, not the hint
        snap(page, "13-panel-live")
        # Reopened while its kernel lives: the widget manager restores the panel from the kernel.
        save_and_reopen(page, jupyter, url)
        page.locator(".xnb-panel").wait_for(state="visible", timeout=120_000)
        assert hint.is_hidden()

        page.locator(".lm-MenuBar-itemLabel", has_text="Kernel").click()
        page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Restart Kernel")).first.click()
        page.locator(".jp-Dialog button", has_text=re.compile(r"^Restart$")).click()
        hint.wait_for(state="visible", timeout=60_000)
        assert hint.inner_text() == PLACEHOLDER
        assert page.locator(".xnb-panel").is_hidden()  # no disconnected widgets with broken links
        assert "Error displaying widget" not in output.inner_text()
        page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=120_000)
        snap(page, "14-panel-after-restart")
        page.locator(".jp-Notebook .jp-Cell").first.screenshot(path=str(ARTIFACTS / "14-panel-after-restart-cell.png"))

        # Saved and reopened: the widget's model is in no kernel now (ipywidgets' "model not found").
        save_and_reopen(page, jupyter, url)
        hint.wait_for(state="visible", timeout=120_000)
        page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=120_000)
        assert hint.inner_text() == PLACEHOLDER and "Error displaying widget" not in output.inner_text()
        snap(page, "15-panel-reopened")

        run_cell(page)
        page.locator(".xnb-panel").wait_for(state="visible", timeout=120_000)
        assert hint.count() == 0 or hint.is_hidden()
        snap(page, "16-panel-again")
    finally:
        with jupyter.client() as http:  # the panel's kernel refreshes every 2 s: stop it
            for session in http.get("/api/sessions").json():
                if session["path"].endswith("restart.ipynb"):
                    http.delete(f"/api/sessions/{session['id']}")


def save_and_reopen(page: Any, jupyter: JupyterServer, url: str) -> None:
    """Save the notebook (with the panel's output) and load the page again."""
    path = jupyter.notebook_dir / "restart.ipynb"
    before = path.stat().st_mtime_ns
    page.keyboard.press("Control+s")
    wait_until(lambda: path.stat().st_mtime_ns != before and PANEL_MIME in path.read_text(), timeout=30,
               what="the notebook to be saved with the panel's output")
    page.goto(url, timeout=120_000)


def run_cell(page: Any) -> None:
    """Run the notebook's first cell once its kernel is idle."""
    page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=120_000)
    page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=120_000)
    page.locator(".jp-Notebook .jp-Cell .jp-InputArea-editor").first.click()
    page.keyboard.press("Shift+Enter")
