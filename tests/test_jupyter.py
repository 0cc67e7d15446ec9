"""The Jupyter server extension in a real Jupyter server (a subprocess on 127.0.0.1):
embedded cluster, sidecar child process, authenticated REST handlers, XSRF, the
OpenAI proxy (streaming, through the `openai` client), sidecar restarts, kernels
that find the cluster, and a clean stop.

The server is shared by the Jupyter test modules (test_jupyter*.py, test_notebooks.py)
through :func:`shared_server`; every wait is on a condition with a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest

from support import free_port, wait_until

ROOT = Path(__file__).resolve().parents[1]
SMOL = "smollm2-135m-instruct"
TOKEN = "xnb-jupyter-test-token"
LABEXTENSION = ROOT / "xnb" / "labextension"


class JupyterServer:
    """``python -m jupyter_server`` with the xnb extension, in its own XNB_HOME and Jupyter dirs."""

    def __init__(self, root: Path, *, xnb_config: dict[str, Any] | None = None, token: str = TOKEN,
                 env: dict[str, str] | None = None, base_url: str = "/") -> None:
        self.root = root
        self.token = token
        self.port = free_port()
        self.base_url = base_url
        self.url = f"http://127.0.0.1:{self.port}{base_url.rstrip('/')}"
        self.home = root / "xnb-home"
        self.notebook_dir = root / "notebooks"
        self.runtime_dir = root / "jupyter-runtime"
        config_dir = root / "jupyter-config"
        settings_dir = root / "lab-settings" / "@jupyterlab" / "apputils-extension"
        for d in (self.home, self.notebook_dir, self.runtime_dir, config_dir, settings_dir, root / "data"):
            d.mkdir(parents=True, exist_ok=True)
        config = {
            "ServerApp": {"jpserver_extensions": {"xnb.jupyter": True}},
            "XnbExtension": {"n_workers": 1, "threads_per_worker": 2, **(xnb_config or {})},
            "LabApp": {"news_url": None, "check_for_updates_class": "jupyterlab.NeverCheckForUpdate"},
        }
        (config_dir / "jupyter_server_config.json").write_text(json.dumps(config))
        # The JupyterLab extension as this checkout built it (scripts/build-labextension.sh), the
        # way `jupyter labextension develop` links it: the data dir comes first in the search path.
        if (LABEXTENSION / "package.json").exists():
            (root / "data" / "labextensions").mkdir(parents=True, exist_ok=True)
            link = root / "data" / "labextensions" / "xnb-labextension"
            if not link.exists():
                link.symlink_to(LABEXTENSION, target_is_directory=True)
        # JupyterLab: no news prompt, no update check, no toasts.
        (settings_dir / "notification.jupyterlab-settings").write_text(
            json.dumps({"fetchNews": "false", "checkForUpdates": False, "doNotDisturbMode": True}))
        self.env = {
            **os.environ,
            "XNB_HOME": str(self.home),
            "JUPYTER_CONFIG_DIR": str(config_dir),
            "JUPYTER_DATA_DIR": str(root / "data"),
            "JUPYTER_RUNTIME_DIR": str(self.runtime_dir),
            "JUPYTERLAB_SETTINGS_DIR": str(root / "lab-settings"),
            "JUPYTERLAB_WORKSPACES_DIR": str(root / "lab-workspaces"),
            "HF_HUB_OFFLINE": "1",
            **(env or {}),
        }
        for name in ("XNB_SCHEDULER_ADDRESS", "XNB_API_URL", "XNB_API_KEYS", "XNB_ADMIN_API_KEYS"):
            self.env.pop(name, None)
        self.log_path = root / "jupyter.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    def start(self, deadline_s: float = 120) -> JupyterServer:
        args = [sys.executable, "-m", "jupyter_server", f"--ServerApp.port={self.port}",
                f"--IdentityProvider.token={self.token}", "--ServerApp.ip=127.0.0.1", "--no-browser",
                f"--ServerApp.root_dir={self.notebook_dir}", f"--ServerApp.base_url={self.base_url}"]
        if os.geteuid() == 0:
            args.append("--allow-root")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=self.notebook_dir)
        wait_until(self._ready, timeout=deadline_s, what="the xnb extension to be ready", interval=0.2)
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"jupyter server exited ({self.proc.returncode}):\n{self.log_tail()}")
        try:
            status = httpx.get(self.url + "/xnb/api/status", headers=self.headers, timeout=2).json()
        except (httpx.HTTPError, ValueError):
            return False
        if status["status"] == "error":
            raise AssertionError(f"xnb extension failed: {status['error']}\n{self.log_tail()}")
        return status["status"] == "ready" and (status["sidecar"] is None or status["sidecar"]["healthy"])

    def status(self) -> dict[str, Any]:
        r = httpx.get(self.url + "/xnb/api/status", headers=self.headers, timeout=10)
        r.raise_for_status()
        return r.json()

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=120, **kwargs)

    def descendants(self) -> list[psutil.Process]:
        assert self.proc is not None
        return psutil.Process(self.proc.pid).children(recursive=True)

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM (what a service manager sends) and wait; the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"jupyter server did not stop in {timeout}s:\n{self.log_tail()}")
        return self.proc.returncode


_shared: dict[str, JupyterServer] = {}


def shared_server(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> JupyterServer:
    """One Jupyter server for every Jupyter test module of the session (stopped at its end)."""
    if "server" not in _shared:
        server = JupyterServer(tmp_path_factory.mktemp("jupyter")).start()
        _shared["server"] = server

        def stop() -> None:
            procs = server.descendants()
            server.stop()
            psutil.wait_procs(procs, timeout=30)

        request.session.config.add_cleanup(stop)
    return _shared["server"]


@pytest.fixture(scope="session")
def jupyter(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> JupyterServer:
    return shared_server(tmp_path_factory, request)


def launch_and_wait(http: httpx.Client, body: dict[str, Any], deadline_s: float = 120) -> dict[str, Any]:
    """POST /xnb/api/models (202), then long-poll the status URL until ready."""
    r = http.post("/xnb/api/models", json=body)
    assert r.status_code == 202, r.text
    record = r.json()
    assert r.headers["Location"].endswith(f"/xnb/api/models/{record['uid']}")
    end = time.monotonic() + deadline_s
    while record["status"] not in ("ready", "error", "lost"):
        assert time.monotonic() < end, f"{record['uid']} still {record['status']}"
        record = http.get(f"/xnb/api/models/{record['uid']}",
                          params={"version": record["version"], "wait": 10}).json()
    assert record["status"] == "ready", record
    return record


@pytest.fixture(scope="module")
def proxied_model(jupyter: JupyterServer) -> Iterator[str]:
    with jupyter.client() as http:
        launch_and_wait(http, {"model": SMOL, "uid": "jp-smol"})
        yield "jp-smol"
        http.delete("/xnb/api/models/jp-smol")


def openai_client(jupyter: JupyterServer) -> openai.OpenAI:
    """The openai SDK through Jupyter: base_url <server>/xnb/v1, the Jupyter token as API key (Bearer)."""
    return openai.OpenAI(base_url=jupyter.url + "/xnb/v1", api_key=jupyter.token, max_retries=0)


# -- the extension comes up ------------------------------------------------------------------


def test_config_file_enables_the_extension() -> None:
    config = json.loads((ROOT / "jupyter-config/jupyter_server_config.d/xnb.json").read_text())
    (module, enabled), = config["ServerApp"]["jpserver_extensions"].items()
    assert enabled is True
    from importlib import import_module

    from xnb.jupyter.extension import XnbExtension

    points = import_module(module)._jupyter_server_extension_points()
    assert points == [{"module": module, "app": XnbExtension}]


def test_cluster_and_sidecar_come_up(jupyter: JupyterServer) -> None:
    status = jupyter.status()
    assert status["status"] == "ready" and status["embedded"] is True
    assert status["sidecar"]["running"] and status["sidecar"]["healthy"]
    assert status["sidecar"]["url"].startswith("http://127.0.0.1:")
    runtime = json.loads((jupyter.home / "runtime" / "cluster.json").read_text())
    assert runtime["scheduler_address"] == status["scheduler_address"]
    assert runtime["api_url"] == status["sidecar"]["url"]
    with jupyter.client() as http:
        cluster = http.get("/xnb/api/cluster").json()
    assert cluster["scheduler"] == status["scheduler_address"]
    assert len(cluster["workers"]) == 1 and cluster["workers"][0]["nthreads"] == 2
    # The sidecar is a child process of the Jupyter server.
    assert status["sidecar"]["pid"] in {p.pid for p in jupyter.descendants()}


# -- authentication and XSRF -----------------------------------------------------------------


@pytest.mark.parametrize("path", ["/xnb/api/models", "/xnb/api/status", "/xnb/api/cluster", "/xnb/v1/models"])
def test_requests_without_token_are_refused(jupyter: JupyterServer, path: str) -> None:
    assert_openai_error(httpx.get(jupyter.url + path, timeout=10), 403)
    assert httpx.get(jupyter.url + path, headers={"Authorization": "token wrong"}, timeout=10).status_code in (401, 403)
    assert httpx.post(jupyter.url + "/xnb/api/models", json={"model": SMOL}, timeout=10).status_code in (401, 403)


def test_token_header_and_query_work(jupyter: JupyterServer) -> None:
    r = httpx.get(jupyter.url + "/xnb/api/models", headers=jupyter.headers, timeout=10)
    assert r.status_code == 200 and isinstance(r.json()["data"], list)
    r = httpx.get(jupyter.url + "/xnb/api/models", headers={"Authorization": f"Bearer {jupyter.token}"}, timeout=10)
    assert r.status_code == 200
    r = httpx.get(jupyter.url + "/xnb/api/catalog", params={"token": jupyter.token, "ability": "embed"}, timeout=10)
    assert r.status_code == 200 and "all-minilm-l6-v2" in {m["name"] for m in r.json()["data"]}


def test_cookie_session_post_needs_xsrf(jupyter: JupyterServer) -> None:
    with httpx.Client(base_url=jupyter.url, timeout=30, follow_redirects=True) as browser:
        assert browser.get("/login", params={"token": jupyter.token}).status_code == 200
        assert any(name.startswith("username-") for name in browser.cookies), browser.cookies
        # The cookie alone authenticates reads ...
        assert browser.get("/xnb/api/models").status_code == 200
        # ... but a state-changing request without the XSRF token is refused,
        body = {"model": "no-such-model"}
        r = browser.post("/xnb/api/models", json=body)
        assert r.status_code == 403, r.text
        assert browser.delete("/xnb/api/models/anything").status_code == 403
        # and with it, the request reaches the handler (here: a 404 for the unknown model).
        xsrf = browser.cookies.get("_xsrf")
        assert xsrf
        r = browser.post("/xnb/api/models", json=body, headers={"X-XSRFToken": xsrf})
        assert r.status_code == 404 and r.json()["error"]["code"] == "catalog_entry_not_found"


# -- the management API ------------------------------------------------------------------------


def assert_openai_error(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    if code:
        assert body["error"]["code"] == code
    return body["error"]


def test_errors_are_openai_shaped(jupyter: JupyterServer) -> None:
    with jupyter.client() as http:
        assert_openai_error(http.get("/xnb/api/models/nope"), 404, "model_not_found")
        assert_openai_error(http.delete("/xnb/api/models/nope"), 404, "model_not_found")
        assert_openai_error(http.get("/xnb/api/catalog/nope/engines"), 404, "catalog_entry_not_found")
        assert_openai_error(http.post("/xnb/api/models", content=b"{not json"), 400)
        err = assert_openai_error(http.post("/xnb/api/models", json={"model": SMOL, "replicas": 0}), 400)
        assert err["param"] == "replicas"
        err = assert_openai_error(http.post("/xnb/api/models", json={"model": SMOL, "colour": "red"}), 400)
        assert err["param"] == "colour"
        assert_openai_error(http.get("/xnb/api/models/nope", params={"wait": "soon"}), 400)


def test_catalog_and_engines(jupyter: JupyterServer) -> None:
    with jupyter.client() as http:
        rows = http.get("/xnb/api/catalog", params={"q": "smollm2"}).json()["data"]
        assert SMOL in [r["name"] for r in rows] and all("smollm2" in r["name"] for r in rows)
        engines = http.get(f"/xnb/api/catalog/{SMOL}/engines").json()["data"]
        assert "llama-cpp" in {e["engine"] for e in engines}
        assert http.get(f"/xnb/api/catalog/{SMOL}").json()["name"] == SMOL


def test_launch_events_and_terminate_through_rest(jupyter: JupyterServer, proxied_model: str) -> None:
    with jupyter.client() as http:
        record = http.get(f"/xnb/api/models/{proxied_model}").json()
        assert record["status"] == "ready" and record["spec"]["engine"] == "llama-cpp"
        kinds = [e["kind"] for e in http.get(f"/xnb/api/models/{proxied_model}/events").json()["data"]]
        assert kinds[0] == "launch" and "ready" in kinds
        assert proxied_model in {m["uid"] for m in http.get("/xnb/api/models").json()["data"]}
        assert_openai_error(http.post("/xnb/api/models", json={"model": SMOL, "uid": proxied_model}), 409, "model_exists")


# -- the OpenAI proxy ----------------------------------------------------------------------------


def test_proxy_streams_chat_with_the_openai_client(jupyter: JupyterServer, proxied_model: str) -> None:
    oai = openai_client(jupyter)
    assert proxied_model in [m.id for m in oai.models.list().data]
    messages = [{"role": "user", "content": "Write a long story about a dragon who learns to cook."}]
    full = oai.chat.completions.create(model=proxied_model, messages=messages, max_tokens=24, temperature=0)
    assert full.choices[0].finish_reason == "length" and full.usage.completion_tokens == 24
    arrivals: list[float] = []
    chunks = []
    for chunk in oai.chat.completions.create(model=proxied_model, messages=messages, max_tokens=24,
                                             temperature=0, stream=True,
                                             stream_options={"include_usage": True}):
        arrivals.append(time.monotonic())
        chunks.append(chunk)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == 24
    assert len(chunks) > 5
    # `Authorization: token T` (Jupyter's own header form) works too.
    oai_token = openai.OpenAI(base_url=jupyter.url + "/xnb/v1", api_key="unused", max_retries=0,
                              default_headers={"Authorization": f"token {jupyter.token}"})
    assert oai_token.models.retrieve(proxied_model).id == proxied_model
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("no-such-model")
    with pytest.raises(openai.PermissionDeniedError, match="Forbidden"):
        openai.OpenAI(base_url=jupyter.url + "/xnb/v1", api_key="wrong-token", max_retries=0).models.list()


def test_proxy_flushes_each_sse_chunk(jupyter: JupyterServer, proxied_model: str) -> None:
    """Chunks reach the client while the model is still generating, not all at the end."""
    body = {"model": proxied_model, "messages": [{"role": "user", "content": "Tell me a long story."}],
            "max_tokens": 48, "temperature": 0, "stream": True}
    events: list[tuple[float, str]] = []
    start = time.monotonic()
    with httpx.stream("POST", jupyter.url + "/xnb/v1/chat/completions", json=body, headers=jupyter.headers,
                      timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line:
                events.append((time.monotonic() - start, line))
    assert events[-1][1] == "data: [DONE]"
    assert all(line.startswith("data: ") for _, line in events)
    first, last = events[0][0], events[-1][0]
    assert last - first > 0.2, f"all {len(events)} events arrived within {last - first:.3f}s: not streamed"


def test_proxy_disconnect_aborts_generation(jupyter: JupyterServer, proxied_model: str) -> None:
    import xnb

    client = xnb.connect(jupyter.status()["scheduler_address"], start=False)
    try:
        model = client.get(proxied_model)

        def aborted() -> int:
            return sum(i["counters"]["aborted"] for i in model.info())

        before = aborted()
        body = {"model": proxied_model, "messages": [{"role": "user", "content": "Write a very long story."}],
                "max_tokens": 2000, "stream": True}
        with httpx.stream("POST", jupyter.url + "/xnb/v1/chat/completions", json=body,
                          headers=jupyter.headers, timeout=60) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")
        wait_until(lambda: aborted() > before, timeout=30, what="the generation to be aborted")
    finally:
        client.close()


def test_proxy_needs_a_running_model(jupyter: JupyterServer) -> None:
    r = httpx.post(jupyter.url + "/xnb/v1/chat/completions", headers=jupyter.headers, timeout=30,
                   json={"model": "nope", "messages": [{"role": "user", "content": "hi"}]})
    assert_openai_error(r, 404, "model_not_found")


# -- resilience and kernels -------------------------------------------------------------------------


def test_sidecar_is_restarted_after_a_crash(jupyter: JupyterServer, proxied_model: str) -> None:
    before = jupyter.status()["sidecar"]
    os.kill(before["pid"], signal.SIGKILL)
    after = wait_until(lambda: (s := jupyter.status()["sidecar"])["pid"] != before["pid"] and s["running"] and s,
                       timeout=30, what="a new sidecar process")
    assert after["restarts"] == before["restarts"] + 1 and after["url"] == before["url"]
    oai = openai_client(jupyter)

    def serves() -> bool:
        try:
            r = oai.chat.completions.create(model=proxied_model, max_tokens=4,
                                            messages=[{"role": "user", "content": "Hi"}])
        except (openai.APIStatusError, openai.APIConnectionError) as exc:
            assert getattr(exc, "status_code", 503) == 503, exc  # restarting: 503, never another error
            return False
        return bool(r.choices[0].message.content)

    wait_until(serves, timeout=60, what="the restarted sidecar to serve", interval=0.3)
    assert httpx.get(jupyter.url + "/api/status", headers=jupyter.headers, timeout=10).status_code == 200


def test_kernel_started_by_the_server_finds_the_cluster(jupyter: JupyterServer) -> None:
    from jupyter_client import BlockingKernelClient

    with jupyter.client() as http:
        kernel = http.post("/api/kernels", json={"name": "python3"}).json()
        try:
            kc = BlockingKernelClient(connection_file=str(jupyter.runtime_dir / f"kernel-{kernel['id']}.json"))
            kc.load_connection_file()
            kc.start_channels()
            try:
                kc.wait_for_ready(timeout=60)
                out: list[str] = []
                code = ("import os, xnb\nc = xnb.connect(start=False)\n"
                        "print(c.scheduler_address, c.cluster is None, os.environ['XNB_API_URL'])")
                reply = kc.execute_interactive(
                    code, timeout=60,
                    output_hook=lambda m: out.append(m["content"].get("text", "")) if m["msg_type"] == "stream" else None)
                assert reply["content"]["status"] == "ok", reply["content"]
            finally:
                kc.stop_channels()
        finally:
            http.delete(f"/api/kernels/{kernel['id']}")
    status = jupyter.status()
    assert "".join(out).split() == [status["scheduler_address"], "True", status["sidecar"]["url"]]


# -- a server of its own (as JupyterHub runs one): base URL, API key on the sidecar, clean stop ------


def test_hub_style_server_sidecar_key_and_clean_stop(tmp_path: Path) -> None:
    server = JupyterServer(tmp_path, xnb_config={"sidecar_api_key": "sk-jupyter-proxy"},
                           base_url="/user/alice/").start()
    try:
        status = server.status()
        sidecar = status["sidecar"]["url"]
        # The sidecar refuses callers without the key; the proxy adds it for Jupyter users.
        assert httpx.get(sidecar + "/v1/models", timeout=10).status_code == 401
        oai = openai.OpenAI(base_url=server.url + "/xnb/v1", api_key=server.token, max_retries=0)
        assert oai.models.list().data == []
        with server.client() as http:
            r = http.post("/xnb/api/models", json={"model": "no-such-model"})
            assert_openai_error(r, 404, "catalog_entry_not_found")
            assert http.get("/xnb/api/cluster").json()["scheduler"] == status["scheduler_address"]
        assert httpx.get(f"http://127.0.0.1:{server.port}/xnb/api/status", headers=server.headers,
                         timeout=10).status_code == 404  # everything lives under the base URL
        procs = server.descendants()
        assert status["sidecar"]["pid"] in {p.pid for p in procs}
        assert len(procs) >= 2  # the sidecar and the embedded cluster's worker process
        runtime = server.home / "runtime" / "cluster.json"
        assert runtime.exists()
    except BaseException:
        server.stop()
        raise
    assert server.stop() == 0, server.log_tail()
    _gone, alive = psutil.wait_procs(procs, timeout=30)
    assert not alive, f"left behind: {[p.cmdline() for p in alive]}"
    assert not runtime.exists()
    log = server.log_tail(200)
    assert "xnb: stopped" in log and "Traceback" not in log, log


def test_attach_to_a_configured_scheduler(jupyter: JupyterServer, tmp_path: Path) -> None:
    """A second server attaches to the first one's cluster.  Killed outright (SIGKILL), it
    leaves neither its sidecar behind nor a dent in the cluster it attached to."""
    address = jupyter.status()["scheduler_address"]
    server = JupyterServer(tmp_path, xnb_config={"scheduler_address": address}).start()
    try:
        status = server.status()
        assert status["scheduler_address"] == address and not status["embedded"]
        with server.client() as http:
            assert http.get("/xnb/api/cluster").json()["scheduler"] == address
            assert http.get("/xnb/v1/models").status_code == 200
        assert not (server.home / "runtime" / "cluster.json").exists()  # not its cluster to advertise
        sidecar = psutil.Process(status["sidecar"]["pid"])
    finally:
        assert server.proc is not None
        server.proc.kill()
        server.proc.wait(timeout=30)
    wait_until(lambda: not sidecar.is_running() or sidecar.status() == psutil.STATUS_ZOMBIE, timeout=30,
               what="the orphaned sidecar to exit")
    assert jupyter.status()["status"] == "ready"
    with jupyter.client() as http:
        assert len(http.get("/xnb/api/cluster").json()["workers"]) == 1
