"""The engine registry: one small plugin mechanism for built-in and third-party engines.

Engines register through the ``xnb.engines`` entry-point group (xnb's own
``pyproject.toml`` lists the built-ins there, exactly as a third-party
package would) or at run time with :func:`register_engine`.  Engine modules
import their heavy libraries (torch, llama_cpp) only inside ``load()``, so
listing engines is cheap and a worker serving only GGUF never imports torch.
"""

from __future__ import annotations

import importlib.util
import logging
from importlib.metadata import entry_points

from xnb.engines.base import Engine
from xnb.errors import InvalidRequest

__all__ = [
    "register_engine",
    "get_engine",
    "engine_names",
    "engines_for",
    "engine_installed",
    "installed_engines",
    "PREFERENCE",
]

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "xnb.engines"

#: Default engine order when a launch names none: the first that can serve wins.
PREFERENCE = ("llama-cpp", "sentence-transformers", "transformers", "vllm")

_registry: dict[str, type[Engine]] = {}
_entry_points_loaded = False


def register_engine(cls: type[Engine]) -> type[Engine]:
    """Add an engine class (usable as a decorator)."""
    _registry[cls.name] = cls
    return cls


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _registry:
            continue
        try:
            cls = ep.load()
        except (ImportError, AttributeError) as exc:
            logger.warning("engine plugin %s could not be loaded: %s", ep.name, exc)
            continue
        _registry[ep.name] = cls


def engine_names() -> list[str]:
    """Every registered engine, preferred ones first."""
    _load_entry_points()
    known = [n for n in PREFERENCE if n in _registry]
    return known + sorted(n for n in _registry if n not in PREFERENCE)


def get_engine(name: str) -> type[Engine]:
    """The engine class registered under ``name`` (400 if there is none)."""
    _load_entry_points()
    try:
        return _registry[name]
    except KeyError:
        raise InvalidRequest(
            f"unknown engine {name!r}; known engines: {', '.join(engine_names())}",
            param="engine",
        ) from None


def engines_for(abilities: list[str], fmt: str) -> list[str]:
    """Engines that can serve a spec of this format and abilities, preferred first."""
    return [n for n in engine_names() if _registry[n].can_serve(abilities, fmt)]


def engine_installed(name: str) -> bool:
    """Whether the libraries the engine needs are importable in this process."""
    cls = get_engine(name)
    return all(importlib.util.find_spec(mod) is not None for mod in cls.requires)


def installed_engines() -> list[str]:
    """The registered engines whose libraries import in this process (what a worker can run)."""
    return [n for n in engine_names() if engine_installed(n)]
