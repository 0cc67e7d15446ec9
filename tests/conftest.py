"""Shared fixtures: a real embedded cluster (scheduler here, workers as processes)
with the real packaged models.  Everything binds 127.0.0.1; no model hub is used."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

from xnb.client import Client
from xnb.cluster import start_local_cluster
from xnb.settings import XnbSettings

SMOL = "smollm2-135m-instruct"
MINILM = "all-minilm-l6-v2"


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
    """The packaged SmolLM2 GGUF on llama.cpp, shared by the tests that only read."""
    model = client.launch(SMOL, uid="smol", timeout=120)
    yield model
    try:
        client.terminate("smol")
    except Exception:  # already terminated by a test, or the cluster is gone
        pass
