"""The ``%xnb`` magics in a real IPython shell, against the cluster of the shared Jupyter
server (found through ``XNB_SCHEDULER_ADDRESS``, as a kernel of that server would)."""

from __future__ import annotations

import _thread
import re
import sys
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from support import wait_until
from test_jupyter import JupyterServer, shared_server

from xnb.client import DEFAULT_MAX_TOKENS
from xnb.errors import XnbError
from xnb.jupyter.magics import HELP, XnbMagics, interpolate


@pytest.fixture(scope="session")
def jupyter(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> JupyterServer:
    return shared_server(tmp_path_factory, request)


@pytest.fixture(scope="module")
def shell(jupyter: JupyterServer) -> Iterator[InteractiveShell]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XNB_SCHEDULER_ADDRESS", jupyter.status()["scheduler_address"])
        ip = InteractiveShell.instance()
        ip.run_line_magic("load_ext", "xnb")
        yield ip
        magics = xnb_magics(ip)
        if magics._client is not None:
            for uid in ("mg-smol", "mg-minilm"):
                try:
                    magics._client.terminate(uid)
                except XnbError:  # already terminated by a test
                    pass
            magics._client.close()
        InteractiveShell.clear_instance()


def xnb_magics(ip: InteractiveShell) -> XnbMagics:
    return ip.magics_manager.registry["XnbMagics"]


def run(ip: InteractiveShell, source: str) -> Any:
    """Run a cell; re-raise what it raised (IPython would only print it)."""
    result = ip.run_cell(source, store_history=False)
    if result.error_before_exec is not None:
        raise result.error_before_exec
    if result.error_in_exec is not None:
        raise result.error_in_exec
    return result.result


def test_interpolate() -> None:
    class Obj:
        name = "Ada"

    ns = {"who": "world", "obj": Obj(), "n": 3}
    assert interpolate("Hello {who}, {obj.name} x{n}", ns) == "Hello world, Ada x3"
    assert interpolate('JSON like {"a": 1} and {{literal}}', ns) == 'JSON like {"a": 1} and {literal}'
    with pytest.raises(UsageError, match="no variable 'missing'"):
        interpolate("{missing}", ns)


def test_help_and_usage_errors(shell: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    run(shell, "%xnb help")
    assert "%%xnb chat" in capsys.readouterr().out
    run(shell, "%xnb")
    assert capsys.readouterr().out.strip() == HELP.strip()
    with pytest.raises(UsageError, match="unknown command 'bogus'"):
        run(shell, "%xnb bogus")
    with pytest.raises(UsageError, match="the following arguments are required: name"):
        run(shell, "%xnb launch")
    with pytest.raises(UsageError, match=r"^no model with uid .nope. is running; %xnb list shows the running models$"):
        run(shell, "%xnb terminate nope")
    with pytest.raises(UsageError, match="cell magic"):
        run(shell, "%xnb chat hello")
    with pytest.raises(UsageError, match="no catalog entry|no model named"):
        run(shell, "%xnb launch no-such-model")


def test_catalog_list_status(shell: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    run(shell, "%xnb catalog minilm")
    out = capsys.readouterr().out
    assert "all-minilm-l6-v2" in out and "embed" in out
    run(shell, "%xnb catalog --ability embed --format gguf")
    assert "smollm2" not in capsys.readouterr().out
    run(shell, "%xnb status")
    out = capsys.readouterr().out
    assert re.search(r"^scheduler:\s+tcp://127.0.0.1:", out, re.M) and "CORES" in out


def test_rich_tables_in_notebooks_plain_text_in_terminals(shell: InteractiveShell) -> None:
    """status, list and catalog return objects: HTML in a notebook, aligned text in a terminal;
    addresses are code (never links), each size and the offline availability show once."""
    status = run(shell, "%xnb status")
    page = status._repr_html_()
    assert "<code>tcp://127.0.0.1:" in page and "<table" in page and "CORES" in repr(status)
    catalog = run(shell, "%xnb catalog qwen2.5")
    sizes = {row[0]: row[3] for row in catalog.rows}
    assert sizes["qwen2.5-instruct"] == "0.5b, 1.5b, 7b"  # not "0.5b, 1.5b, 7b, 0.5b, 1.5b, 7b"
    assert "<table" in catalog._repr_html_()
    offline = {row[0]: row[4] for row in run(shell, "%xnb catalog").rows}
    assert offline["smollm2-135m-instruct"] == offline["all-minilm-l6-v2"] == "packaged"
    assert offline["qwen2.5-instruct"] == ""
    listing = run(shell, "%xnb list")
    assert "no models running; %xnb launch NAME" in repr(listing) or "UID" in repr(listing)


def test_errors_are_one_line_in_notebook_syntax(shell: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    """A wrong uid from the Python client prints one line naming the %xnb command to use, no
    Dask/tornado traceback and no [404 ...] code; misspelled or abbreviated flags are errors."""
    magics = xnb_magics(shell)
    shell.user_ns["c"] = magics.client
    capsys.readouterr()
    shell.run_cell("c.get('nope')", store_history=False)
    out = capsys.readouterr()
    shown = out.out + out.err
    assert "ModelNotFound: no model with uid 'nope' is running; %xnb list shows the running models" in shown
    assert "Traceback" not in shown and "tornado" not in shown and "distributed" not in shown
    with pytest.raises(UsageError, match=r"no model named 'no-such'.*; %xnb catalog lists the models$") as info:
        run(shell, "%xnb launch no-such")
    assert "[404" not in str(info.value) and "`xnb" not in str(info.value)
    with pytest.raises(UsageError, match="unrecognized arguments: --replica 2"):
        run(shell, "%xnb launch no-such --replica 2")  # argparse would take it for --replicas
    with pytest.raises(UsageError, match="unrecognized arguments: --max-tok"):
        run(shell, "%%xnb chat --max-tok 3\nhi")


def test_launch_chat_conversation_and_reset(shell: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    model = run(shell, "%xnb launch smollm2-135m-instruct --uid mg-smol")
    out = capsys.readouterr().out
    assert model.uid == "mg-smol" and "mg-smol is ready" in out
    magics = xnb_magics(shell)
    assert magics.current == "mg-smol"
    run(shell, "%xnb list")
    assert "mg-smol" in capsys.readouterr().out
    events = run(shell, "%xnb events mg-smol")
    kinds = [row[1] for row in events.rows]
    assert "ready" in kinds and "loading" in kinds, kinds
    capsys.readouterr()

    shell.user_ns["city"] = "Paris"
    run(shell, '%%xnb chat --system "Answer in one short sentence." --max-tokens 12 --temperature 0 --out a1\n'
               "What is {city} famous for?")
    printed = capsys.readouterr().out
    answer = shell.user_ns["a1"]
    assert answer and printed.strip() == answer.strip()
    history = magics.conversations["mg-smol"]
    assert [m["role"] for m in history] == ["system", "user", "assistant"]
    assert history[1]["content"] == "What is Paris famous for?"

    run(shell, "%%xnb chat mg-smol --max-tokens 8 --temperature 0\nAnd its river?")
    assert capsys.readouterr().out.strip()
    assert [m["role"] for m in magics.conversations["mg-smol"]] == ["system", "user", "assistant", "user", "assistant"]

    run(shell, "%xnb reset")
    assert "mg-smol" not in magics.conversations and "conversation cleared" in capsys.readouterr().out

    # Ctrl-C during a long answer: one line, no traceback, and the model keeps serving.
    stdout = sys.stdout

    def interrupt_when_streaming() -> None:
        wait_until(lambda: stdout.getvalue().strip(), timeout=60, what="the answer to start")
        _thread.interrupt_main()

    capsys.readouterr()
    threading.Thread(target=interrupt_when_streaming, daemon=True).start()
    run(shell, "%%xnb chat --max-tokens 2000\nWrite a very long story about a cat.")
    printed = capsys.readouterr()
    assert "[interrupted" in printed.out and "keeps running" in printed.out
    assert "Traceback" not in printed.out + printed.err and "aclose" not in printed.out + printed.err
    assert not magics.conversations.get("mg-smol")  # the interrupted exchange is not kept
    wait_until(lambda: magics.client.replica_info("mg-smol")[0]["counters"]["aborted"] >= 1, timeout=30,
               what="the generation to be aborted")
    run(shell, "%%xnb chat --max-tokens 4 --temperature 0\nHi")
    assert capsys.readouterr().out.strip()
    magics.conversations.clear()

    run(shell, "%%xnb complete --max-tokens 8 --temperature 0 --out c1\nOnce upon a time")
    assert shell.user_ns["c1"] and capsys.readouterr().out.strip() == shell.user_ns["c1"].strip()


def test_embed_returns_an_array(shell: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UsageError, match="no running model can embed"):
        run(shell, "%xnb embed 'a cat'")
    run(shell, "%xnb launch all-minilm-l6-v2 --uid mg-minilm")
    shell.user_ns["texts"] = ["a cat", "a dog", "a car"]
    run(shell, "vecs = %xnb embed texts")
    vecs = shell.user_ns["vecs"]
    assert isinstance(vecs, np.ndarray) and vecs.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-3)
    one = run(shell, "%xnb embed --model mg-minilm 'a single sentence'")
    assert one.shape == (1, 384)
    # Two models now run; chat still finds the only one that can chat.
    xnb_magics(shell).current = "mg-minilm"
    run(shell, "%%xnb chat --max-tokens 4\nHi")
    assert capsys.readouterr().out.strip()
    run(shell, "%xnb terminate mg-minilm")
    assert "mg-minilm: terminated" in capsys.readouterr().out
    assert xnb_magics(shell).current is None


@pytest.mark.slow  # 512 tokens: seconds on an idle machine, minutes on a loaded 2-core one
def test_default_answer_length(shell: InteractiveShell) -> None:
    """model.chat() without max_tokens stops at DEFAULT_MAX_TOKENS (the magics' default too)."""
    model = run(shell, "%xnb launch smollm2-135m-instruct --uid mg-limit")
    try:
        reply = model.chat("Tell me everything.", ignore_eos=True)
        assert reply["usage"]["completion_tokens"] == DEFAULT_MAX_TOKENS == 512
        assert reply["choices"][0]["finish_reason"] == "length"
    finally:
        model.terminate()
