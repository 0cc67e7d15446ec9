"""The rerank route: ``POST /v1/rerank`` (also ``/rerank`` and ``/v2/rerank``).

One body for the clients that rerank over HTTP: Cohere (v1 and v2), Jina,
vLLM and Xinference send ``model``, ``query``, ``documents`` (strings or
objects with ``text``; Cohere's ``rank_fields`` pick fields of other objects),
``top_n`` and ``return_documents``.  The answer holds ``results`` ranked best
first (``index``, ``relevance_score``, ``document``), ``usage`` (Jina, vLLM)
and ``meta`` (Cohere).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from xnb.api.metrics import Metrics
from xnb.api.openai import read_json
from xnb.manager import ModelManager
from xnb.openai.media import RerankRequest
from xnb.protocol import validate

__all__ = ["router"]

router = APIRouter(tags=["rerank"])


@router.post("/v1/rerank")
@router.post("/v2/rerank")
@router.post("/rerank")
async def rerank(request: Request) -> dict[str, Any]:
    manager: ModelManager = request.app.state.manager
    metrics: Metrics = request.app.state.metrics
    body: RerankRequest = validate(RerankRequest, await read_json(request))
    with metrics.request(body.model, "rerank"):
        result = await manager.rerank_response(body)
    metrics.prompt_tokens.labels(body.model).inc(result["usage"]["prompt_tokens"])
    return result
