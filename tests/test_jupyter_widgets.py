"""The widget panel driven in-process (no browser): catalog filters, the launch form's
progress, the models table with its terminate buttons, the cluster view, streaming chat,
and the background refresh.  Clicks call the same handlers a browser click would;
long work runs in the panel's background threads, so the tests wait on conditions."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from support import wait_until
from test_jupyter import JupyterServer, shared_server

import xnb
from xnb.jupyter.views import launch_progress
from xnb.jupyter.widgets import PANEL_MIME, PLACEHOLDER, Panel
from xnb.runtime.registry import progress_line

SMOL = "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def jupyter(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> JupyterServer:
    return shared_server(tmp_path_factory, request)


@pytest.fixture(scope="module")
def client(jupyter: JupyterServer) -> Iterator[Any]:
    c = xnb.connect(jupyter.status()["scheduler_address"], start=False)
    yield c
    for uid in ("wd-smol", "wd-other", "wd-dup", "wd-fail"):
        try:
            c.terminate(uid)
        except xnb.XnbError:
            pass
    c.close()


@pytest.fixture
def panel(client: Any) -> Iterator[Panel]:
    p = Panel(client, auto_refresh=False)
    yield p
    p.close()


def test_launch_progress() -> None:
    def record(*statuses: str, progress: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"uid": "m", "status": statuses[0], "replicas_ready": statuses.count("ready"),
                "replicas": [{"status": s, "progress": progress or {}} for s in statuses]}

    assert launch_progress(record("launching"))[0] < 0.05
    half = launch_progress(record("downloading", progress={"downloaded": 50, "total": 100}))[0]
    assert 0.3 < half < 0.4
    assert launch_progress(record("loading"))[0] == 0.75
    assert launch_progress(record("ready", "loading"))[0] == pytest.approx(0.875)
    fraction, text = launch_progress(record("ready"))
    assert fraction == 1.0 and text == "m ready [1/1 ready]"
    # One replica up, one loading: the model is still launching (not "ready [ready, loading]").
    both = record("ready", "loading", progress={"phase": "loading", "since": 100.0, "step": "importing torch"})
    assert launch_progress(both)[1].startswith("m launching: #? loading")
    now_text = progress_line(record("loading", progress={"since": 100.0, "step": "reading the weights",
                                                          "size_bytes": 90e6}), now=124.0)
    assert now_text == "m loading 24s (reading the weights, 90 MB) [0/1 ready]"
    down = progress_line(record("downloading", progress={"since": 100.0, "downloaded": 5e6, "total": 20e6}), now=103)
    assert down == "m downloading 3s 5 MB of 20 MB [0/1 ready]"


def test_panel_parts_and_catalog_filters(panel: Panel) -> None:
    assert panel.tabs.titles == ("Models", "Launch", "Catalog", "Cluster", "Chat", "Try")
    assert "xnb-panel" in panel._dom_classes
    catalog = panel.catalog
    assert len(catalog.rows) >= 10 and len(catalog.list.options) == len(catalog.rows)
    catalog.ability.value = "embed"
    names = [value for _, value in catalog.list.options]
    assert "all-minilm-l6-v2" in names and SMOL not in names
    catalog.ability.value = ""
    catalog.text.value = "smollm2"
    catalog.size.value = "135m"
    assert [value for _, value in catalog.list.options] == [SMOL]
    assert catalog.count.value == f"1 of {len(catalog.rows)} models"
    catalog.list.value = SMOL  # shows the engines that can serve it (in the background)
    wait_until(lambda: "llama-cpp" in catalog.details.value, timeout=30, what="the engines table")
    assert "packaged" in dict((v, k) for k, v in catalog.list.options)[SMOL]
    assert "available offline: yes" in catalog.details.value
    catalog.use.click()
    assert panel.launch_form.model.value == SMOL and panel.tabs.selected_index == 1
    wait_until(lambda: "llama-cpp" in [v for _, v in panel.launch_form.engine.options], timeout=30,
             what="the launch form's engines")
    cluster = panel.cluster
    assert "1 worker(s)" in cluster.summary.value and "2 cores" in cluster.summary.value
    assert cluster.table.value.count("<tr>") == 2  # header + one worker


def test_launch_chat_and_terminate_from_the_panel(panel: Panel) -> None:
    form = panel.launch_form
    form.model.value = SMOL
    form.uid.value = "wd-smol"
    seen: list[float] = []
    form.progress.observe(lambda change: seen.append(change["new"]), names="value")
    form.button.click()  # the launch runs in a background thread
    wait_until(lambda: form.progress.bar_style == "success", timeout=120, what="the launch to finish")
    assert form.progress.value == 1.0 and "wd-smol" in form.message.value
    assert seen == sorted(seen) and seen[-1] == 1.0  # the bar only moves forward
    assert not form.button.disabled

    labels = [c.value for c in panel.models._cells["wd-smol"]]
    assert labels[:4] == ["wd-smol", SMOL, "ready", "llama-cpp"] and labels[6] == "0"

    chat = panel.chat
    assert "wd-smol" in chat.model.options
    chat.model.value = "wd-smol"
    chat.input.value = "Say hello."
    chat.max_tokens.value = 12
    chat.send.click()
    wait_until(lambda: len(chat.histories.get("wd-smol", [])) == 2 and not chat.send.disabled,
             timeout=90, what="the streamed answer")
    answer = chat.histories["wd-smol"][1]
    assert answer["role"] == "assistant" and answer["content"]
    assert "assistant" in chat.transcript.value and chat.input.value == ""
    panel.refresh()
    assert [c.value for c in panel.models._cells["wd-smol"]][6] == "1"  # requests served

    button(panel, "wd-smol", "xnb-terminate").click()  # asks first: other notebooks may use it
    wait_until(lambda: has_button(panel, "wd-smol", "xnb-confirm-terminate"), timeout=30, what="the confirmation")
    assert "wd-smol" in {m["uid"] for m in panel.client.list()} and "Other notebooks" in panel.status.value
    button(panel, "wd-smol", "xnb-cancel").click()
    wait_until(lambda: has_button(panel, "wd-smol", "xnb-terminate"), timeout=30, what="the row to come back")
    button(panel, "wd-smol", "xnb-terminate").click()
    wait_until(lambda: has_button(panel, "wd-smol", "xnb-confirm-terminate"), timeout=30, what="the confirmation")
    button(panel, "wd-smol", "xnb-confirm-terminate").click()
    wait_until(lambda: "wd-smol" not in panel.models._cells, timeout=60, what="the row to go")
    assert "wd-smol" not in chat.model.options


def test_background_refresh_sees_other_clients(client: Any) -> None:
    panel = Panel(client, refresh_s=0.3)
    try:
        client.launch(SMOL, uid="wd-other", wait=False)
        wait_until(lambda: "wd-other" in panel.models._cells, timeout=30, what="the refresh to show the model")
        wait_until(lambda: panel.models._cells["wd-other"][2].value == "ready", timeout=120,
                 what="the status to reach ready")
        newer = Panel(client, refresh_s=0.3)  # a newer panel takes over refreshing
        try:
            assert panel._stop.is_set() and not newer._stop.is_set()
        finally:
            newer.close()
        client.terminate("wd-other")
    finally:
        panel.close()


def actions(panel: Panel, uid: str) -> list[Any]:
    """The action buttons of a model's row in the Models grid."""
    cells = panel.models._cells.get(uid)
    if not cells:
        return []
    grid = list(panel.models.grid.children)
    return list(grid[grid.index(cells[6]) + 1].children)


def has_button(panel: Panel, uid: str, css: str) -> bool:
    return any(css in b._dom_classes for b in actions(panel, uid))


def button(panel: Panel, uid: str, css: str) -> Any:
    (found,) = [b for b in actions(panel, uid) if css in b._dom_classes]
    return found


def test_models_grid_lines_up_and_keeps_whole_values(panel: Panel) -> None:
    """Headers and cells are children of one grid (same columns), one action cell per row."""
    models = panel.models
    tracks = re.findall(r"minmax\([^)]*\)|[^\s]+", models.grid.layout.grid_template_columns)
    assert len(tracks) == len(models.COLUMNS), tracks
    headers = models.grid.children[:len(models.COLUMNS)]
    assert [h.value for h in headers][:7] == [f"<b>{c}</b>" for c in models.COLUMNS[:7]]
    assert len(models.COLUMNS) == 8  # uid, model, status, engine, worker, uptime, requests, actions


def test_placeholder_after_a_kernel_restart(panel: Panel) -> None:
    """The widget-view, the hint as plain text (nbconvert, GitHub) and the xnb type the
    JupyterLab extension renders: the same view plus the hint it shows once the kernel is gone."""
    bundle = panel._repr_mimebundle_()
    view = bundle["application/vnd.jupyter.widget-view+json"]
    assert view["model_id"] == panel.model_id
    assert bundle["text/plain"] == PLACEHOLDER and "run this cell again" in PLACEHOLDER
    assert bundle[PANEL_MIME] == {**view, "hint": PLACEHOLDER}
    json.dumps(bundle)  # what goes into the notebook file


def test_launch_errors_stay_visible(panel: Panel, client: Any) -> None:
    """A conflict shows in the form and the header, and the refresh does not wipe it."""
    client.launch(SMOL, uid="wd-dup")
    form = panel.launch_form
    form.model.value = SMOL
    form.uid.value = "wd-dup"
    form.button.click()
    wait_until(lambda: form.progress.bar_style == "danger", timeout=60, what="the launch to fail")
    expected = "a model with uid 'wd-dup' is already running; choose another uid; %xnb terminate wd-dup stops it"
    assert expected in html.unescape(form.message.value)
    panel.refresh()  # what the background refresh does every 2 s
    assert expected in html.unescape(form.message.value) and expected in html.unescape(panel.status.value)
    assert "launching" not in form.message.value
    client.terminate("wd-dup")


def test_failed_launch_says_why_and_offers_retry_and_dismiss(panel: Panel) -> None:
    form = panel.launch_form
    form.model.value = "qwen2.5-instruct"  # not packaged: with the hub offline its download fails
    wait_until(lambda: "0.5b" in [v for _, v in form.size.options], timeout=30, what="the sizes")
    assert [v for _, v in form.size.options] == ["", "0.5b", "1.5b", "7b"]  # each size once
    form.size.value = "0.5b"
    form.uid.value = "wd-fail"
    form.button.click()
    wait_until(lambda: form.progress.bar_style == "danger", timeout=120, what="the launch to fail")
    assert "failed to launch" in form.message.value and "%xnb events wd-fail shows what happened" in form.message.value
    panel.refresh()
    cells = panel.models._cells["wd-fail"]
    assert cells[2].value == "error" and "failed:" in cells[-1].value
    button(panel, "wd-fail", "xnb-show-events").click()
    wait_until(lambda: "events of wd-fail" in panel.models.events.value, timeout=30, what="the events")
    assert "error" in panel.models.events.value
    button(panel, "wd-fail", "xnb-retry").click()
    wait_until(lambda: "launching wd-fail again" in panel.status.value, timeout=30, what="the retry")
    wait_until(lambda: panel.refresh() or panel.models._cells.get("wd-fail", [None, None, None])[2].value == "error",
               timeout=120, what="the retry to fail again")
    button(panel, "wd-fail", "xnb-dismiss").click()
    wait_until(lambda: "wd-fail" not in panel.models._cells, timeout=60, what="the failed model to go")
