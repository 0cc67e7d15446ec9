"""Streaming text helpers every text engine uses: bytes → text without splitting a
UTF-8 character (:class:`Utf8Decoder`), and stop strings found across token
boundaries without ever emitting part of one (:class:`StopChecker`)."""

from __future__ import annotations

import codecs

__all__ = ["Utf8Decoder", "StopChecker"]


class Utf8Decoder:
    """Turns token byte pieces into text without splitting a multi-byte character
    (invalid bytes become U+FFFD, wherever the pieces are cut)."""

    __slots__ = ("_decoder",)

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, piece: bytes) -> str:
        return self._decoder.decode(piece)

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


class StopChecker:
    """Applies stop strings to streamed text.

    Text that might be the start of a stop string is held back until it is
    known not to be; :meth:`feed` returns ``(safe_text, stopped)``.
    """

    __slots__ = ("stops", "_held", "_max")

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self._held = ""
        self._max = max((len(s) for s in self.stops), default=0)

    def feed(self, text: str) -> tuple[str, bool]:
        if not self.stops:
            return text, False
        buf = self._held + text
        first = -1
        for s in self.stops:
            i = buf.find(s)
            if i != -1 and (first == -1 or i < first):
                first = i
        if first != -1:
            self._held = ""
            return buf[:first], True
        # Hold back the longest suffix that is a prefix of some stop string.
        keep = 0
        for k in range(min(len(buf), self._max - 1), 0, -1):
            tail = buf[-k:]
            if any(s.startswith(tail) for s in self.stops):
                keep = k
                break
        self._held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep], False

    def flush(self) -> str:
        rest, self._held = self._held, ""
        return rest
