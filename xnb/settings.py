"""One settings class for the whole of xnb (env prefix ``XNB_``).

The CLI derives its flags from these fields (:func:`xnb.cli.settings_options`),
so ``--port`` and ``XNB_PORT`` always mean the same thing; the sidecar takes an
instance in :func:`xnb.api.create_app`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["XnbSettings", "default_home"]

CommaList = Annotated[list[str], NoDecode]


def default_home() -> Path:
    return Path("~/.xnb").expanduser()


class XnbSettings(BaseSettings):
    """Settings of the cluster, the supervisor and the API sidecar."""

    model_config = SettingsConfigDict(env_prefix="XNB_", extra="ignore")

    home: Path = Field(
        default_factory=default_home,
        description="where xnb keeps custom catalog entries, the runtime file and downloads",
    )
    scheduler_address: str | None = Field(
        default=None,
        description="Dask scheduler to attach to (tcp://... or tls://...); none: start or find a local cluster",
    )
    state_dir: Path | None = Field(
        default=None,
        description="where `xnb scheduler` keeps the launched models it restores after a restart "
        "(default: $XNB_HOME/state)",
    )
    # -- embedded cluster ---------------------------------------------------------
    n_workers: int = Field(default=1, ge=1, description="worker processes of the embedded cluster")
    threads_per_worker: int | None = Field(
        default=None, ge=1, description="threads (cores) per worker; default: all cores / n_workers"
    )
    memory_limit: str = Field(default="auto", description="memory limit per worker (Dask syntax)")
    dashboard: bool = Field(default=False, description="serve the Dask dashboard on 127.0.0.1")
    tls: bool = Field(default=False, description="encrypt the embedded cluster with temporary TLS certificates")
    tls_ca_file: Path | None = Field(default=None, description="CA certificate for a TLS cluster")
    tls_cert: Path | None = Field(default=None, description="certificate (PEM) this process presents")
    tls_key: Path | None = Field(default=None, description="private key (PEM) of --tls-cert")
    # -- API sidecar -------------------------------------------------------------
    host: str = Field(default="127.0.0.1", description="address the API sidecar binds")
    port: int = Field(default=9997, ge=0, le=65535, description="port of the API sidecar")
    api_keys: CommaList = Field(
        default_factory=list, description="inference API keys (comma-separated); none: no auth"
    )
    admin_api_keys: CommaList = Field(
        default_factory=list, description="keys that may also manage models (comma-separated)"
    )
    api_keys_file: Path | None = Field(
        default=None,
        description="file with one key per line; 'admin:KEY' lines are admin keys",
    )
    allowed_hosts: CommaList = Field(
        default_factory=list,
        description="extra Host header names accepted besides the bound host (DNS-rebinding guard)",
    )
    max_queue: int = Field(
        default=64, ge=0, description="requests a replica queues beyond those it serves (then 429)"
    )
    max_upload_mb: float = Field(
        default=25.0, gt=0, description="largest audio upload /v1/audio/transcriptions accepts (MB; then 400)"
    )
    stream_poll_s: float = Field(
        default=0.5, gt=0, description="longest a stream pull waits on the model actor"
    )
    responses_max: int = Field(
        default=10_000, ge=1,
        description="stored Responses API responses kept under $XNB_HOME/responses (least recently used evicted)",
    )

    @field_validator("api_keys", "admin_api_keys", "allowed_hosts", mode="before")
    @classmethod
    def _split(cls, v: object) -> object:
        if isinstance(v, str):
            return [item.strip() for item in v.split(",") if item.strip()]
        return v

    def load_key_file(self) -> tuple[list[str], list[str]]:
        """Keys from :attr:`api_keys_file`: (inference keys, admin keys)."""
        inference: list[str] = []
        admin: list[str] = []
        if self.api_keys_file is None:
            return inference, admin
        for raw in self.api_keys_file.read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("admin:"):
                admin.append(line.removeprefix("admin:").strip())
            else:
                inference.append(line)
        return inference, admin

    @property
    def catalog_dir(self) -> Path:
        return self.home / "catalog"

    @property
    def cache_dir(self) -> Path:
        """Model files: hub downloads, conversions, and the index of both."""
        return self.home / "cache"

    @property
    def state_path(self) -> Path:
        """The state directory of `xnb scheduler`."""
        return self.state_dir or self.home / "state"

    @property
    def runtime_file(self) -> Path:
        return self.home / "runtime" / "cluster.json"
