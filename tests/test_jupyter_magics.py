"""The ``%xnb`` magics in a real IPython shell, against the cluster of the shared Jupyter
server (found through ``XNB_SCHEDULER_ADDRESS``, as a kernel of that server would)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from test_jupyter import JupyterServer, shared_server

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
    with pytest.raises(UsageError, match=r"no model with uid 'nope'.*\[404 model_not_found\]"):
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
    assert "scheduler: tcp://127.0.0.1:" in out and "CORES" in out


def test_launch_chat_conversation_and_reset(shell: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    model = run(shell, "%xnb launch smollm2-135m-instruct --uid mg-smol")
    out = capsys.readouterr().out
    assert model.uid == "mg-smol" and "mg-smol is ready" in out
    magics = xnb_magics(shell)
    assert magics.current == "mg-smol"
    run(shell, "%xnb list")
    assert "mg-smol" in capsys.readouterr().out

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
