"""Prometheus metrics of one sidecar (a registry per app, no module globals).

Request counts by model/endpoint/status, prompt and generated tokens, time to
first token and inter-token latency histograms are recorded as requests run;
queue depth, models by status and replicas per worker are read from the
cluster when ``/metrics`` is scraped.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Iterator

from xnb.protocol import ModelStatus, ReplicaStatus
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from xnb.errors import XnbError

__all__ = ["Metrics", "RequestTimer"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)


class RequestTimer:
    """Times one streamed request: TTFT on the first chunk, ITL between chunks."""

    def __init__(self, metrics: "Metrics", model: str) -> None:
        self.metrics = metrics
        self.model = model
        self.start = time.perf_counter()
        self.last: float | None = None

    def chunk(self) -> None:
        now = time.perf_counter()
        if self.last is None:
            self.metrics.ttft.labels(self.model).observe(now - self.start)
        else:
            self.metrics.itl.labels(self.model).observe(now - self.last)
        self.last = now


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("xnb_requests", "API requests", ["model", "endpoint", "status"], registry=r)
        self.duration = Histogram("xnb_request_duration_seconds", "Request duration",
                                  ["model", "endpoint"], buckets=_LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("xnb_prompt_tokens", "Prompt tokens processed", ["model"], registry=r)
        self.generated_tokens = Counter("xnb_generated_tokens", "Tokens generated", ["model"], registry=r)
        self.ttft = Histogram("xnb_time_to_first_token_seconds", "Time to first streamed token",
                              ["model"], buckets=_LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("xnb_inter_token_latency_seconds", "Time between streamed chunks",
                             ["model"], buckets=_ITL_BUCKETS, registry=r)
        self.images = Counter("xnb_images_generated", "Images generated", ["model"], registry=r)
        self.audio_seconds = Counter("xnb_audio_seconds", "Seconds of audio transcribed or spoken",
                                     ["model", "endpoint"], registry=r)
        self.queue_depth = Gauge("xnb_queue_depth", "Requests in flight on the model's replicas",
                                 ["model"], registry=r)
        self.models = Gauge("xnb_models", "Launched models by status", ["status"], registry=r)
        self.replicas = Gauge("xnb_replicas", "Model replicas per worker", ["worker"], registry=r)

    def usage(self, model: str, usage: dict[str, int] | None) -> None:
        if usage:
            self.prompt_tokens.labels(model).inc(usage.get("prompt_tokens", 0))
            self.generated_tokens.labels(model).inc(usage.get("completion_tokens", 0))

    @contextmanager
    def request(self, model: str, endpoint: str) -> Iterator[None]:
        """Count a request and its status (the XnbError's status, 500 otherwise)."""
        start = time.perf_counter()
        status = "200"
        try:
            yield
        except XnbError as exc:
            status = str(exc.status)
            raise
        except BaseException:
            status = "500"
            raise
        finally:
            self.requests.labels(model, endpoint, status).inc()
            self.duration.labels(model, endpoint).observe(time.perf_counter() - start)

    async def refresh(self, manager: Any) -> None:
        """Read cluster-side gauges (models by status, replicas, queue depth)."""
        records = await manager.list()
        self.models.clear()
        self.replicas.clear()
        self.queue_depth.clear()
        for status in ModelStatus:
            self.models.labels(status.value).set(0)
        for record in records:
            self.models.labels(record["status"]).inc()
            for replica in record["replicas"]:
                if ReplicaStatus(replica["status"]).live:
                    self.replicas.labels(replica["worker"]).inc()
            if ModelStatus(record["status"]).serving:
                infos = await manager.replica_info(record["uid"])
                self.queue_depth.labels(record["uid"]).set(sum(i.get("inflight", 0) for i in infos))

    def render(self) -> bytes:
        return generate_latest(self.registry)
