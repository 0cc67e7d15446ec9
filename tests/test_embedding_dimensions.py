"""`dimensions` on /v1/embeddings: truncation and renormalisation for models whose catalog
entry says they are Matryoshka-trained, a 400 for the others; token usage; base64."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import numpy as np
import openai
import pytest

import xnb.catalog
from xnb.catalog.schema import ModelFamily

MINILM_FILE = "all-minilm-l6-v2.json"


def _launch(admin: httpx.Client, model: str, uid: str) -> None:
    r = admin.post("/api/models", json={"model": model, "uid": uid})
    assert r.status_code == 202, r.text
    deadline = time.monotonic() + 180
    record = r.json()
    while record["status"] not in ("ready", "error", "lost"):
        assert time.monotonic() < deadline, record
        record = admin.get(f"/api/models/{uid}", params={"version": record["version"], "wait": 10}).json()
    assert record["status"] == "ready", record


@pytest.fixture(scope="module")
def embedders(admin: httpx.Client) -> Iterator[tuple[str, str]]:
    """MiniLM as catalogued (not Matryoshka) and the same files registered as a family that
    declares Matryoshka truncation down to 32 (the code path is what is tested here)."""
    family: dict[str, Any] = json.loads((Path(xnb.catalog.__file__).parent / "families" / MINILM_FILE).read_text())
    family.update(name="minilm-matryoshka-test", matryoshka_min_dimensions=32)
    r = admin.post("/api/catalog", json={"family": family, "overwrite": True})
    assert r.status_code == 201, r.text
    _launch(admin, "all-minilm-l6-v2", "dims-plain")
    _launch(admin, "minilm-matryoshka-test", "dims-mrl")
    yield "dims-plain", "dims-mrl"
    admin.delete("/api/models/dims-plain")
    admin.delete("/api/models/dims-mrl")
    admin.delete("/api/catalog/minilm-matryoshka-test")


def test_catalog_field_is_checked() -> None:
    with pytest.raises(ValueError, match="matryoshka_min_dimensions"):
        ModelFamily.model_validate({"name": "x", "abilities": ["embed"], "dimensions": 64,
                                    "matryoshka_min_dimensions": 128,
                                    "specs": [{"format": "pytorch", "size": "1m", "sources": [
                                        {"kind": "local", "path": "/nowhere"}]}]})


def test_dimensions_truncate_and_renormalise(oai: openai.OpenAI, embedders: tuple[str, str]) -> None:
    _, mrl = embedders
    texts = ["a cat sat on the mat", "quantum chromodynamics"]
    full = oai.embeddings.create(model=mrl, input=texts)
    cut = oai.embeddings.create(model=mrl, input=texts, dimensions=64)
    assert cut.usage.prompt_tokens == full.usage.prompt_tokens > 0
    for f, c in zip(full.data, cut.data):
        head = np.array(f.embedding[:64])
        assert len(c.embedding) == 64
        np.testing.assert_allclose(c.embedding, head / np.linalg.norm(head), rtol=1e-5, atol=1e-6)
        assert abs(np.linalg.norm(c.embedding) - 1) < 1e-5
    # base64 carries the same truncated vectors (the SDK asks for base64 and decodes it)
    raw = httpx.post(str(oai.base_url) + "embeddings", headers={"Authorization": f"Bearer {oai.api_key}"},
                     json={"model": mrl, "input": texts, "dimensions": 64, "encoding_format": "base64"},
                     timeout=60).json()
    decoded = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(decoded, cut.data[0].embedding, rtol=1e-6)
    assert len(oai.embeddings.create(model=mrl, input="x", dimensions=384).data[0].embedding) == 384


@pytest.mark.parametrize("dimensions", [16, 385])
def test_dimensions_out_of_range(oai: openai.OpenAI, embedders: tuple[str, str], dimensions: int) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        oai.embeddings.create(model=embedders[1], input="x", dimensions=dimensions)
    assert info.value.body["param"] == "dimensions" and "32 to 384" in info.value.body["message"]


def test_dimensions_refused_without_matryoshka(oai: openai.OpenAI, embedders: tuple[str, str]) -> None:
    plain, _ = embedders
    with pytest.raises(openai.BadRequestError) as info:
        oai.embeddings.create(model=plain, input="x", dimensions=128)
    assert info.value.body["param"] == "dimensions" and "Matryoshka" in info.value.body["message"]
    assert len(oai.embeddings.create(model=plain, input="x", dimensions=384).data[0].embedding) == 384
