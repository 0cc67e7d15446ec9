"""The API sidecar: an OpenAI-compatible server plus model management over HTTP."""

from __future__ import annotations

from xnb.api.app import create_app, run_sidecar

__all__ = ["create_app", "run_sidecar"]
