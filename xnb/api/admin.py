"""Management routes (``/api/...``; admin key): models, catalog, cluster.

The one management implementation: the Jupyter server extension serves the same
routes at ``{base_url}xnb/api/...`` by proxying here.

Thin: each route validates its input and calls one
:class:`~xnb.manager.ModelManager` method.  Launch answers 202 with the model's
status URL; ``GET`` on it with ``?version=N&wait=S`` long-polls for the next
change, which is how clients show download → load → ready progress.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from xnb.api.openai import read_json
from xnb.manager import ModelManager
from xnb.openai.requests import parse_request
from xnb.protocol import LaunchOptions, ModelInfo

__all__ = ["router", "PREFIX", "LaunchBody"]

PREFIX = "/api"
router = APIRouter(prefix=PREFIX, tags=["management"])

#: What ``POST /api/models`` accepts: :class:`xnb.protocol.LaunchOptions`, as everywhere.
LaunchBody = LaunchOptions


class ScaleBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    replicas: int = Field(ge=1, le=64)


class RegisterBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    family: dict[str, Any]
    overwrite: bool = False


def _manager(request: Request) -> ModelManager:
    return request.app.state.manager


def _with_url(request: Request, record: ModelInfo) -> dict[str, Any]:
    """The record with its status URL; behind the Jupyter proxy (``X-Forwarded-Prefix``)
    the URL the caller used (``{base_url}xnb/api/models/UID``)."""
    prefix = request.headers.get("x-forwarded-prefix")
    if prefix:
        url = f"{prefix.rstrip('/')}{PREFIX}/models/{record['uid']}"
    else:
        url = str(request.url_for("describe_model", uid=record["uid"]))
    return {**record, "status_url": url}


@router.get("/models")
async def list_models(request: Request) -> dict[str, Any]:
    return {"data": await _manager(request).list()}


@router.post("/models", status_code=202)
async def launch_model(request: Request) -> JSONResponse:
    body = parse_request(LaunchOptions, await read_json(request))
    record = await _manager(request).launch(body)
    out = _with_url(request, record)
    return JSONResponse(out, status_code=202, headers={"Location": out["status_url"]})


@router.get("/models/{uid}", name="describe_model")
async def describe_model(
    uid: str,
    request: Request,
    version: int = Query(default=-1, ge=-1, lt=2**53,
                         description="long-poll: answer once the version passes this"),
    wait: float = Query(default=0.0, ge=0.0, le=60.0, description="longest wait in seconds"),
) -> dict[str, Any]:
    manager = _manager(request)
    record = await manager.watch(uid, version, wait) if wait > 0 else await manager.describe(uid)
    return _with_url(request, record)


@router.delete("/models/{uid}")
async def terminate_model(uid: str, request: Request) -> dict[str, Any]:
    return await _manager(request).terminate(uid)


@router.post("/models/{uid}/scale")
async def scale_model(uid: str, request: Request) -> dict[str, Any]:
    body = parse_request(ScaleBody, await read_json(request))
    return await _manager(request).scale(uid, body.replicas)


@router.get("/models/{uid}/events")
async def model_events(
    uid: str, request: Request, since: float = Query(default=0.0, ge=0.0, allow_inf_nan=False),
) -> dict[str, Any]:
    return {"data": await _manager(request).events(uid, since)}


@router.get("/models/{uid}/replicas")
async def model_replicas(uid: str, request: Request) -> dict[str, Any]:
    await _manager(request).describe(uid)  # 404 for unknown uids
    return {"data": await _manager(request).replica_info(uid)}


@router.get("/catalog")
async def catalog(
    request: Request,
    q: str | None = None,
    ability: str | None = None,
    format: str | None = None,
) -> dict[str, Any]:
    return {"data": await _manager(request).catalog(q, ability=ability, format=format)}


@router.post("/catalog", status_code=201)
async def register_model(request: Request) -> JSONResponse:
    body = parse_request(RegisterBody, await read_json(request))
    result = await _manager(request).register(body.family, overwrite=body.overwrite)
    return JSONResponse(result, status_code=201)


@router.get("/catalog/{name}")
async def catalog_entry(name: str, request: Request) -> dict[str, Any]:
    return await _manager(request).catalog_get(name)


@router.delete("/catalog/{name}")
async def unregister_model(name: str, request: Request) -> dict[str, Any]:
    return await _manager(request).unregister(name)


@router.get("/catalog/{name}/engines")
async def catalog_engines(name: str, request: Request) -> dict[str, Any]:
    return {"data": await _manager(request).engines(name)}


@router.get("/cluster")
async def cluster(request: Request) -> dict[str, Any]:
    return await _manager(request).cluster()


@router.get("/cached")
async def cached(request: Request) -> dict[str, Any]:
    return {"data": await _manager(request).cached()}
