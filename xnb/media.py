"""The manager's speech, rerank and image operations (a mixin of :class:`~xnb.manager.ModelManager`).

Neutral calls (:meth:`transcribe`, :meth:`speech`, :meth:`rerank`,
:meth:`images`) give segments, audio bytes, scores and PNG bytes; the
OpenAI/Cohere-shaped ones (``*_response``) are what the sidecar returns and
the Python client can return too.  Audio travels to the model actor as
``bytes`` and comes back as ``bytes`` (no base64 across Dask).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, AsyncIterator

from xnb.engines.media import ImageRequest, SpeechRequest, TranscribeRequest
from xnb.errors import InvalidRequest, UnsupportedParameter
from xnb.openai.media import (
    ImagesRequest,
    RerankRequest,
    images_body,
    rerank_body,
)

if TYPE_CHECKING:
    from xnb.manager import ModelManager

__all__ = ["MediaOperations", "DEFAULT_MAX_UPLOAD_BYTES", "check_upload"]

#: Largest audio upload (OpenAI's limit); the sidecar's is the setting max_upload_mb.
DEFAULT_MAX_UPLOAD_BYTES = 25 * 1024 * 1024


def check_upload(audio: bytes, limit: int = DEFAULT_MAX_UPLOAD_BYTES) -> None:
    """400 naming ``file`` for an empty upload or one over ``limit`` bytes."""
    if not audio:
        raise InvalidRequest("the uploaded file is empty; send an audio file", param="file")
    if len(audio) > limit:
        raise InvalidRequest(
            f"the uploaded file is {len(audio) / 1e6:.1f} MB, over the {limit / 1e6:.1f} MB limit; send a "
            "shorter or compressed file (the server's limit is the setting max_upload_mb, XNB_MAX_UPLOAD_MB)",
            param="file",
        )


class MediaOperations:
    """Transcribe, speak, rerank and draw with launched models."""

    async def transcribe(
        self: "ModelManager", uid: str, audio: bytes, request: TranscribeRequest | None = None,
        *, max_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    ) -> list[dict[str, Any]]:
        """Speech to text: the info item, then every segment (dicts)."""
        return [item async for item in self.transcribe_stream(uid, audio, request, max_bytes=max_bytes)]

    async def transcribe_stream(
        self: "ModelManager", uid: str, audio: bytes, request: TranscribeRequest | None = None,
        *, max_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    ) -> AsyncIterator[dict[str, Any]]:
        """Speech to text as it is decoded: the info item, then a segment at a time."""
        check_upload(audio, max_bytes)
        request = request or TranscribeRequest()
        events = self._pulled(uid, "transcribe", "start_media", "transcribe",
                              request.model_dump(exclude_defaults=True), bytes(audio))
        async for item in _payloads(events):
            yield dict(item)

    async def speech(self: "ModelManager", uid: str, request: SpeechRequest) -> bytes:
        """Text to speech: the whole audio file in ``request.response_format``."""
        return b"".join([chunk async for chunk in self.speech_stream(uid, request)])

    async def speech_stream(self: "ModelManager", uid: str, request: SpeechRequest) -> AsyncIterator[bytes]:
        """Text to speech as it is synthesized (WAV and PCM a sentence at a time)."""
        events = self._pulled(uid, "speech", "start_media", "speak", request.model_dump(exclude_defaults=True))
        async for chunk in _payloads(events):
            yield bytes(chunk)

    async def rerank(self: "ModelManager", uid: str, query: str, documents: list[str]) -> tuple[list[float], int]:
        """Relevance of each document to ``query``: ``(scores, prompt tokens)``.  Cross-encoders
        score pairs; any embedding model ranks as a bi-encoder."""
        routes = await self._route(uid)
        if not {"rerank", "embed"} & set(routes["abilities"]):
            raise UnsupportedParameter(
                f"model {uid!r} ({routes['model_name']}) cannot rerank; launch a reranker or an embedding "
                "model (`xnb catalog --ability rerank`)",
                param="model",
            )
        if not query:
            raise InvalidRequest("query must not be empty", param="query")
        if not documents:
            raise InvalidRequest("documents must contain at least one document", param="documents")
        scores, tokens = await self._with_replica(uid, None, "rerank", query, list(documents))
        return list(scores), int(tokens)

    async def images(self: "ModelManager", uid: str, request: ImageRequest) -> list[bytes]:
        """Text to image: ``request.n`` PNG files."""
        return list(await self._with_replica(uid, "image", "image", request.model_dump(exclude_defaults=True)))

    # -- API-shaped (the sidecar's answers) -------------------------------------------------------------

    async def rerank_response(self: "ModelManager", body: RerankRequest) -> dict[str, Any]:
        body.check_extra()
        scores, tokens = await self.rerank(body.model, body.query, body.texts())
        return rerank_body(body, scores, tokens)

    async def images_response(self: "ModelManager", body: ImagesRequest) -> dict[str, Any]:
        return images_body(await self.images(body.model, body.to_engine()))


async def _payloads(events: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """The non-empty payloads of a pulled media stream's deltas, in order (a delta is
    ``(index, payload, finish, logprobs)``); closing this closes the stream."""
    try:
        async for kind, value in events:
            if kind == "deltas":
                for delta in value:
                    if delta[1]:
                        yield delta[1]
    finally:
        await events.aclose()  # type: ignore[attr-defined]
