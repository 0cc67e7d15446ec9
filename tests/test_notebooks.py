"""Every notebook in notebooks/ runs top to bottom (nbclient, a real kernel) against the
cluster of a real Jupyter server with the xnb extension, and its outputs are checked.

The kernels get only ``XNB_HOME``: they find the cluster (and the API sidecar) through
the runtime file the extension wrote, as a kernel on that machine would.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient
from test_jupyter import JupyterServer, shared_server

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.fixture(scope="session")
def jupyter(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> JupyterServer:
    return shared_server(tmp_path_factory, request)


def run_notebook(name: str, jupyter: JupyterServer, tmp_path: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("XNB_")}
    env.update({"XNB_HOME": str(jupyter.home), "HF_HUB_OFFLINE": "1"})
    client = NotebookClient(nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env=env)
    nbformat.write(nb, tmp_path / name)  # executed copy, for a look when something fails
    return nb


def by_tag(nb: nbformat.NotebookNode, tag: str) -> Any:
    (cell,) = [c for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]
    return cell


def stream_text(cell: Any) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


def result_text(cell: Any) -> str:
    return "".join(o["data"].get("text/plain", "") for o in cell.outputs if o.output_type == "execute_result")


def test_every_notebook_is_tested() -> None:
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(CHECKS)


def check_quickstart(nb: nbformat.NotebookNode) -> None:
    assert "xnb.Client" in result_text(by_tag(nb, "connect"))
    assert "quickstart-smol" in result_text(by_tag(nb, "launch"))
    assert stream_text(by_tag(nb, "chat")).strip()
    assert stream_text(by_tag(nb, "stream")).strip()
    first = stream_text(by_tag(nb, "chat-magic")).strip()
    assert len(first.split()) >= 3, first
    assert stream_text(by_tag(nb, "chat-magic-followup")).strip()
    # %xnb status is an HTML table with the proxied OpenAI URL; addresses are code, not links.
    status = "".join(o.get("data", {}).get("text/html", "") for o in by_tag(nb, "status").outputs)
    assert re.search(r"<code>http://127\.0\.0\.1:\d+/xnb/v1</code>", status), status
    assert "<code>tcp://127.0.0.1:" in status
    # %xnb launch: one progress output, updated in place until it says ready.
    launch = by_tag(nb, "launch-magic").outputs
    shown = [o for o in launch if o.output_type in ("stream", "display_data")]
    assert len(shown) == 1 and "quickstart-magic is ready on" in shown[0]["data"]["text/plain"], launch
    events = "".join(o.get("data", {}).get("text/html", "") for o in by_tag(nb, "events").outputs)
    assert "events of quickstart-magic" in events and "ready" in events
    # A user error: one line naming the %xnb command to type, no Dask/tornado traceback.
    (error,) = [o for o in by_tag(nb, "error").outputs if o.output_type == "error"]
    assert error.traceback == ["ModelNotFound: no model with uid 'no-such-model' is running; "
                               "%xnb list shows the running models"], error.traceback
    assert "terminated" in stream_text(by_tag(nb, "terminate-magic"))
    panel = by_tag(nb, "panel").outputs
    assert any("run this cell again" in o.get("data", {}).get("text/plain", "") for o in panel), panel
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in panel), panel
    assert "terminated" in result_text(by_tag(nb, "cleanup"))


def check_openai_client(nb: nbformat.NotebookNode) -> None:
    assert stream_text(by_tag(nb, "setup")).strip().endswith("/v1")
    assert "openai-smol" in result_text(by_tag(nb, "models"))
    chat = stream_text(by_tag(nb, "chat"))
    assert "completion_tokens" in chat and chat.splitlines()[0].strip()
    assert stream_text(by_tag(nb, "stream")).strip()
    assert stream_text(by_tag(nb, "completion")).strip()
    assert "terminated" in result_text(by_tag(nb, "cleanup"))


def check_batch_embeddings(nb: nbformat.NotebookNode) -> None:
    assert result_text(by_tag(nb, "texts")) == "2000"
    assert result_text(by_tag(nb, "shape")) == "(2000, 384)"
    assert re.search(r"embedded 2000 texts into 384 dimensions .* 8 model calls", stream_text(by_tag(nb, "batch")))
    assert result_text(by_tag(nb, "check")) == "'ok'"
    assert len(stream_text(by_tag(nb, "search")).strip().splitlines()) == 5
    assert "terminated" in result_text(by_tag(nb, "cleanup"))


def launch_line(cell: Any) -> str:
    """What ``%xnb launch`` left: one progress output, updated in place."""
    shown = [o for o in cell.outputs if o.output_type in ("stream", "display_data")]
    assert len(shown) == 1, cell.outputs
    return shown[0].get("text") or shown[0]["data"]["text/plain"]


def check_audio(nb: nbformat.NotebookNode) -> None:
    assert "audio-voice is ready" in launch_line(by_tag(nb, "launch-voice"))
    assert "audio-whisper is ready" in launch_line(by_tag(nb, "launch-whisper"))
    speak = by_tag(nb, "speak")
    assert "saved" in stream_text(speak) and "fox.wav" in stream_text(speak)
    assert any("<audio" in o.get("data", {}).get("text/html", "") for o in speak.outputs), speak.outputs
    heard = stream_text(by_tag(nb, "transcribe")).lower()
    assert "quick brown fox" in heard, heard
    assert result_text(by_tag(nb, "check")) == "True"
    srt = stream_text(by_tag(nb, "python"))
    assert "00:00:00,000 --> " in srt and "hello world" in srt.lower(), srt
    assert any("<audio" in o.get("data", {}).get("text/html", "") for o in by_tag(nb, "player").outputs)
    assert result_text(by_tag(nb, "cleanup")) == "['terminated', 'terminated']"


CHECKS = {
    "audio.ipynb": check_audio,
    "quickstart.ipynb": check_quickstart,
    "openai_client.ipynb": check_openai_client,
    "batch_embeddings.ipynb": check_batch_embeddings,
}


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_notebook_runs(name: str, jupyter: JupyterServer, tmp_path: Path) -> None:
    nb = run_notebook(name, jupyter, tmp_path)
    CHECKS[name](nb)
