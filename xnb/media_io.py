"""Audio and images on the Python client's side: reading an audio file given by path
or bytes, and knowing whether results can display inline (a Jupyter kernel)."""

from __future__ import annotations

from pathlib import Path
from typing import Union

__all__ = ["AudioInput", "read_audio", "in_notebook"]

#: An audio file: its path, or its bytes.
AudioInput = Union[str, Path, bytes, bytearray]


def read_audio(audio: AudioInput) -> bytes:
    """The bytes of an audio file given by path or as bytes."""
    if isinstance(audio, (bytes, bytearray, memoryview)):
        return bytes(audio)
    return Path(audio).expanduser().read_bytes()


def in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (where audio and images display)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"
