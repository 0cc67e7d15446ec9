"""Shared fixtures: a real embedded cluster (scheduler here, workers as processes)
with the real packaged models.  Everything binds 127.0.0.1; no model hub is used."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Iterator

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx
import openai
import pytest
from support import ADMIN_KEY, INFERENCE_KEY, MINILM, SMOL, free_port, wait_until  # noqa: F401

from xnb.client import Client
from xnb.runtime.cluster import start_local_cluster
from xnb.settings import XnbSettings


@pytest.fixture(scope="session")
def xnb_settings(tmp_path_factory: pytest.TempPathFactory) -> XnbSettings:
    home = tmp_path_factory.mktemp("xnb-home")
    os.environ["XNB_HOME"] = str(home)
    return XnbSettings(home=home)


@pytest.fixture(scope="session")
def cluster(xnb_settings: XnbSettings):
    cluster = start_local_cluster(xnb_settings, n_workers=1, threads_per_worker=2)
    yield cluster
    cluster.close()


@pytest.fixture(scope="session")
def client(cluster, xnb_settings: XnbSettings):
    c = Client(cluster.scheduler_address, settings=xnb_settings)
    yield c
    c.close()


@pytest.fixture(scope="session")
def smol(client: Client):
    """SmolLM2 on llama.cpp as a default launch gives it (the packaged Q4_1 GGUF requantized
    to Q8_0), shared by the tests that only read."""
    model = client.launch(SMOL, uid="smol", timeout=120)
    yield model
    try:
        client.terminate("smol")
    except Exception:  # already terminated by a test, or the cluster is gone
        pass


@pytest.fixture(scope="session")
def sidecar(cluster, smol, xnb_settings: XnbSettings) -> Iterator[str]:
    """`xnb serve` as a real process against the session cluster, with API keys."""
    port = free_port()
    env = {**os.environ, "XNB_API_KEYS": INFERENCE_KEY, "XNB_ADMIN_API_KEYS": ADMIN_KEY,
           "XNB_HOME": str(xnb_settings.home)}
    # Its log goes to a file: a pipe nobody reads fills up and blocks the sidecar's logging.
    log_path = xnb_settings.home / "sidecar.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "xnb.cli", "serve", "--scheduler", cluster.scheduler_address,
         "--port", str(port), "--max-queue", "64"],
        env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"sidecar exited: {log_path.read_text()}")
        try:
            return httpx.get(url + "/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(healthy, 60, "the sidecar's /health")
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="session")
def oai(sidecar: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=sidecar + "/v1", api_key=INFERENCE_KEY, max_retries=0)


@pytest.fixture(scope="session")
def admin(sidecar: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sidecar, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=120) as c:
        yield c


@pytest.fixture(scope="session")
def http(sidecar: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sidecar, headers={"Authorization": f"Bearer {INFERENCE_KEY}"}, timeout=120) as c:
        yield c


@pytest.fixture(scope="session")
def echo(client: Client):
    """The echo test engine (no model files): its catalog family registered as data."""
    from xnb.engines.echo import ECHO_FAMILY

    client.register(ECHO_FAMILY, overwrite=True)
    model = client.launch(ECHO_FAMILY["name"], uid="echo", timeout=60)
    yield model
    try:
        client.terminate("echo")
    except Exception:  # already terminated by a test, or the cluster is gone
        pass
