"""The image route: ``POST /v1/images/generations`` (OpenAI's body, ``b64_json`` PNGs).

``size`` is ``WIDTHxHEIGHT`` (or ``auto``: the pipeline's own); xnb's extra
parameters ``seed``, ``steps`` (or ``num_inference_steps``), ``guidance_scale``
and ``negative_prompt`` pass through to the diffusers engine.  A size the
pipeline cannot draw is a 400 naming ``size``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from xnb.api.metrics import Metrics
from xnb.api.openai import read_json
from xnb.manager import ModelManager
from xnb.openai.media import ImagesRequest
from xnb.protocol import validate

__all__ = ["router"]

router = APIRouter(prefix="/v1/images", tags=["images"])


@router.post("/generations")
async def generations(request: Request) -> dict[str, Any]:
    manager: ModelManager = request.app.state.manager
    metrics: Metrics = request.app.state.metrics
    body: ImagesRequest = validate(ImagesRequest, await read_json(request))
    with metrics.request(body.model, "images"):
        result = await manager.images_response(body)
    metrics.images.labels(body.model).inc(len(result["data"]))
    return result
