"""The model actor's calls for speech, rerank and images (a mixin of ModelActor).

* :meth:`MediaCalls.start_media` begins a transcription or a speech synthesis
  and returns a stream id pulled like a chat stream (``pull``/``abort``): the
  engine's iterator runs on a thread of the actor and each item (a segment dict,
  a chunk of audio bytes) becomes one delta ``(0, item, None)``.
  :meth:`media` is the same in one call.
* :meth:`rerank` and :meth:`image` are single blocking calls on that thread pool.

Audio and images cross Dask as ``bytes`` (pickled out of band, never base64).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable, Iterator

from xnb.engines.media import (
    ImageRequest,
    SpeechRequest,
    TranscribeRequest,
    audio_encoders,
    check_speech_format,
    encode_speech,
)
from xnb.errors import EngineError, InvalidRequest, XnbError
from xnb.protocol import GenerateResult, validate

if TYPE_CHECKING:
    from xnb.engines.base import Engine, Sink

__all__ = ["MediaCalls"]

logger = logging.getLogger(__name__)


class MediaCalls:
    """Transcribe, speak, rerank and draw on a :class:`~xnb.runtime.actor.ModelActor`."""

    _media_pool: ThreadPoolExecutor | None = None
    _media_busy: int = 0
    _encoders: list[str] | None = None

    def _pool_for(self, engine: "Engine") -> ThreadPoolExecutor:
        if self._media_pool is None:
            self._media_pool = ThreadPoolExecutor(
                max_workers=max(1, engine.max_concurrency), thread_name_prefix=f"xnb-media-{self.uid}"  # type: ignore[attr-defined]
            )
        return self._media_pool

    def _speech_formats(self) -> list[str]:
        if self._encoders is None:
            self._encoders = audio_encoders()
        return self._encoders

    async def start_media(self, method: str, request: dict[str, Any], audio: bytes | None = None, *,
                          sid: str | None = None, puller: str | None = None) -> str:
        """Begin ``"transcribe"`` (with the uploaded ``audio``) or ``"speak"``; returns a
        stream id (``sid``, ``puller``: as for ``ModelActor.start``)."""
        engine = await self._engine_for_request()  # type: ignore[attr-defined]
        make: Callable[[], Iterator[Any]]
        if method == "transcribe":
            treq = validate(TranscribeRequest, request)
            if not audio:
                raise InvalidRequest("the uploaded file is empty; send an audio file", param="file")
            make = lambda: engine.transcribe(audio, treq)  # noqa: E731
        elif method == "speak":
            sreq = validate(SpeechRequest, request)
            check_speech_format(sreq.response_format, self._speech_formats())
            make = lambda: encode_speech(  # noqa: E731
                engine.speak(sreq), engine.sample_rate, sreq.response_format, stream=sreq.stream
            )
        else:
            raise InvalidRequest(f"unknown media call {method!r}; use transcribe or speak")
        stream = self._new_stream(1, method, sid, puller)  # type: ignore[attr-defined]
        self._pool_for(engine).submit(_drain, engine.name, make, stream.sink)
        return self._register(stream, sid)  # type: ignore[attr-defined, no-any-return]

    async def media(self, method: str, request: dict[str, Any], audio: bytes | None = None) -> GenerateResult:
        """:meth:`start_media` and every pull in one call: ``(items, usage, error)``."""
        sid = await self.start_media(method, request, audio)
        items: list[Any] = []
        while True:
            pulled = await self.pull(sid, max_wait=5.0)  # type: ignore[attr-defined]
            items.extend(pulled.deltas)
            if pulled.done:
                return GenerateResult(items, pulled.usage, pulled.error)

    async def rerank(self, query: str, documents: list[str]) -> tuple[list[float], int]:
        """Relevance scores of ``documents`` for ``query`` and the tokens read."""
        engine = await self._engine_for_request()  # type: ignore[attr-defined]
        if not documents:
            raise InvalidRequest("documents must not be empty", param="documents")
        result = await self._blocking(engine, "rerank", lambda: engine.rerank(query, documents))
        return list(result.scores), int(result.prompt_tokens)

    async def image(self, request: dict[str, Any]) -> list[bytes]:
        """PNG files for an image request."""
        engine = await self._engine_for_request()  # type: ignore[attr-defined]
        ireq = validate(ImageRequest, request)
        return await self._blocking(engine, "draw", lambda: engine.image(ireq))

    async def _blocking(self, engine: "Engine", what: str, fn: Callable[[], Any]) -> Any:
        self._media_busy += 1
        self.counters["requests"] += 1  # type: ignore[attr-defined]
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool_for(engine), fn)
        except XnbError:
            raise
        except Exception as exc:  # a library failure: report it, keep the replica
            logger.exception("%s failed on %s", what, self.uid)  # type: ignore[attr-defined]
            raise EngineError(f"the {engine.name} engine failed to {what}: {type(exc).__name__}") from None
        finally:
            self._media_busy -= 1

    def _close_media(self) -> None:
        if self._media_pool is not None:
            self._media_pool.shutdown(wait=False, cancel_futures=True)
            self._media_pool = None


def _drain(engine_name: str, make: Callable[[], Iterator[Any]], sink: "Sink") -> None:
    """Run an engine iterator into a sink (on a thread), stopping when the client aborts."""
    try:
        for item in make():
            if sink.cancelled.is_set():
                sink.finish(0, "abort")
                break
            sink.put(0, item)
        else:
            sink.finish(0, "stop")
        sink.close(0, 0)
    except XnbError as exc:
        sink.fail(exc)
    except Exception as exc:  # a library failure: the request fails, the replica stays up
        logger.exception("engine %s failed a request", engine_name)
        sink.fail(EngineError(f"the {engine_name} engine failed: {type(exc).__name__}"))
