"""The model catalog: built-in families shipped as JSON, plus custom registrations.

Adding a model is data, not code: drop a family JSON (validated by
:class:`~xnb.catalog.schema.ModelFamily`) into ``families/`` or register one
at run time; custom entries persist as files under ``$XNB_HOME/catalog``.
"""

from __future__ import annotations

import difflib
import json
import logging
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from xnb.catalog.schema import (
    HubSource,
    LaunchSpec,
    LocalSource,
    ModelFamily,
    ModelSpec,
    PackageSource,
    Source,
)
from xnb.engines import engines_for, get_engine
from xnb.errors import CatalogEntryNotFound, Conflict, InvalidRequest, NextStep

__all__ = [
    "Catalog",
    "ModelFamily",
    "ModelSpec",
    "LaunchSpec",
    "HubSource",
    "PackageSource",
    "LocalSource",
    "Source",
    "load_builtin_families",
    "validation_message",
]

logger = logging.getLogger(__name__)


def validation_message(exc: ValidationError) -> str:
    """A one-paragraph summary of a pydantic error, naming the fields."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def load_builtin_families() -> list[ModelFamily]:
    """Every family JSON shipped in ``xnb/catalog/families``."""
    out = []
    # (not `files`: that name is the submodule xnb.catalog.files once it is imported)
    for entry in sorted(resources.files("xnb.catalog").joinpath("families").iterdir(), key=lambda p: p.name):
        if not entry.name.endswith(".json"):
            continue
        data = json.loads(entry.read_text())
        family = ModelFamily.model_validate(data)
        family.builtin = True
        out.append(family)
    return out


class Catalog:
    """Built-in and custom model families, searchable and resolvable to launch specs."""

    def __init__(self, custom_dir: Path | None = None) -> None:
        self.custom_dir = custom_dir
        self._families: dict[str, ModelFamily] = {f.name: f for f in load_builtin_families()}
        if custom_dir is not None and custom_dir.is_dir():
            for path in sorted(custom_dir.glob("*.json")):
                try:
                    family = ModelFamily.model_validate_json(path.read_text())
                except ValidationError as exc:
                    logger.warning("skipping invalid custom model %s: %s", path, exc)
                    continue
                if family.name in self._families:
                    logger.warning("custom model %s shadows a built-in one; skipped", path)
                    continue
                self._families[family.name] = family

    # -- reading -------------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted(self._families)

    def get(self, name: str) -> ModelFamily:
        try:
            return self._families[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._families, n=3)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise CatalogEntryNotFound(
                f"no model named {name!r} in the catalog.{hint}",
                param="model", next_step=NextStep("catalog", why="lists the models"),
            ) from None

    def search(
        self,
        text: str | None = None,
        *,
        ability: str | None = None,
        fmt: str | None = None,
        builtin: bool | None = None,
    ) -> list[ModelFamily]:
        out = []
        for family in sorted(self._families.values(), key=lambda f: f.name):
            if text and text.lower() not in (family.name + " " + family.description).lower():
                continue
            if ability and ability not in family.abilities:
                continue
            if fmt and all(s.format != fmt for s in family.specs):
                continue
            if builtin is not None and family.builtin != builtin:
                continue
            out.append(family)
        return out

    def engines(self, name: str) -> list[dict[str, Any]]:
        """For each spec of a family, the engines that can serve it."""
        family = self.get(name)
        rows = []
        for spec in family.specs:
            for engine in engines_for(list(family.abilities), spec.format):
                rows.append(
                    {
                        "engine": engine,
                        "format": spec.format,
                        "size": spec.size,
                        "quantizations": list(spec.quantizations),
                        "requires_gpu": get_engine(engine).requires_gpu,
                    }
                )
        return rows

    # -- writing ----------------------------------------------------------------------

    def register(self, data: dict[str, Any] | ModelFamily, *, overwrite: bool = False) -> ModelFamily:
        """Add a custom family (persisted under ``custom_dir`` when one is set)."""
        if isinstance(data, ModelFamily):
            family = data
        else:
            try:
                family = ModelFamily.model_validate(data)
            except ValidationError as exc:
                raise InvalidRequest(
                    f"invalid model definition: {validation_message(exc)}", param="model"
                ) from None
        existing = self._families.get(family.name)
        if existing is not None and (existing.builtin or not overwrite):
            what = "a built-in model" if existing.builtin else "a registered model"
            raise Conflict(
                f"{family.name!r} is already {what}; choose another name"
                + ("" if existing.builtin else " or pass overwrite"),
                param="name",
            )
        family.builtin = False
        if self.custom_dir is not None:
            self.custom_dir.mkdir(parents=True, exist_ok=True)
            path = self.custom_dir / f"{family.name}.json"
            path.write_text(family.model_dump_json(indent=2, exclude_none=True))
        self._families[family.name] = family
        return family

    def unregister(self, name: str) -> None:
        family = self.get(name)
        if family.builtin:
            raise InvalidRequest(f"{name!r} is built in and cannot be unregistered", param="name")
        if self.custom_dir is not None:
            (self.custom_dir / f"{name}.json").unlink(missing_ok=True)
        del self._families[name]

    # -- launching ----------------------------------------------------------------------

    def resolve(
        self,
        name: str,
        *,
        engine: str | None = None,
        fmt: str | None = None,
        size: str | None = None,
        quantization: str | None = None,
        engine_options: dict[str, Any] | None = None,
    ) -> LaunchSpec:
        """Narrow a family to one spec, quantization and engine, or say why not (400)."""
        family = self.get(name)
        specs = [
            s
            for s in family.specs
            if (fmt is None or s.format == fmt)
            and (size is None or s.size == size.lower())
            and (quantization is None or quantization in s.quantizations)
            and (engine is None or get_engine(engine).can_serve(list(family.abilities), s.format))
        ]
        if not specs:
            available = "; ".join(
                f"format={s.format} size={s.size} quantizations={','.join(s.quantizations)}"
                for s in family.specs
            )
            wanted = ", ".join(
                f"{k}={v}"
                for k, v in (("engine", engine), ("format", fmt), ("size", size), ("quantization", quantization))
                if v is not None
            )
            raise InvalidRequest(
                f"{name!r} has no spec matching {wanted}. Available: {available}",
                param="model",
            )
        spec = specs[0]
        if engine is None:
            candidates = engines_for(list(family.abilities), spec.format)
            if not candidates:
                raise InvalidRequest(
                    f"no registered engine can serve {name!r} ({spec.format}); "
                    "install one, e.g. pip install 'xnb[llama-cpp]'",
                    param="engine",
                )
            engine = candidates[0]
        engine_cls = get_engine(engine)
        try:
            defaults = {k: v for k, v in family.engine_options.items() if k in engine_cls.Options.model_fields}
            options = engine_cls.Options.model_validate({**defaults, **(engine_options or {})})
        except ValidationError as exc:
            raise InvalidRequest(
                f"invalid options for engine {engine!r}: {validation_message(exc)}",
                param="engine_options",
            ) from None
        quant = quantization or spec.quantizations[0]
        return LaunchSpec(
            model_name=family.name,
            abilities=list(family.abilities),
            context_length=family.context_length,
            format=spec.format,
            size=spec.size,
            quantization=quant,
            engine=engine,
            sources=[_fill(src, quant) for src in spec.sources],
            file_size_mb=spec.file_size_mb,
            chat_template=family.chat_template,
            stop=list(family.stop),
            dimensions=family.dimensions,
            matryoshka_min_dimensions=family.matryoshka_min_dimensions,
            tool_auto=family.tool_auto,
            engine_options=options.model_dump(exclude_defaults=True),
        )


def _fill(source: Any, quantization: str) -> Any:
    """Substitute ``{quantization}`` in a source's file names."""
    updates: dict[str, Any] = {}
    for attr in ("file", "path"):
        value = getattr(source, attr, None)
        if isinstance(value, str) and "{quantization}" in value:
            updates[attr] = value.replace("{quantization}", quantization)
    return source.model_copy(update=updates) if updates else source
