"""The widget panel driven in-process (no browser): catalog filters, the launch form's
progress, the models table with its terminate buttons, the cluster view, streaming chat,
and the background refresh.  Clicks call the same handlers a browser click would;
long work runs in the panel's background threads, so the tests wait on conditions."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from support import wait_until
from test_jupyter import JupyterServer, shared_server

import xnb
from xnb.jupyter.views import launch_progress
from xnb.jupyter.widgets import Panel

SMOL = "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def jupyter(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> JupyterServer:
    return shared_server(tmp_path_factory, request)


@pytest.fixture(scope="module")
def client(jupyter: JupyterServer) -> Iterator[Any]:
    c = xnb.connect(jupyter.status()["scheduler_address"], start=False)
    yield c
    for uid in ("wd-smol", "wd-other"):
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
    assert fraction == 1.0 and text == "m: ready (1/1 ready)"


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

    rows = {row.children[0].value: row for row in panel.models.children[1:]}
    assert "wd-smol" in rows
    labels = [c.value for c in rows["wd-smol"].children[:-1]]
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

    rows["wd-smol"].children[-1].click()  # Terminate
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
