"""The diffusers engine: text-to-image pipelines (SD-Turbo, SDXL-Turbo, FLUX.1, ...).

The model folder is a diffusers pipeline snapshot (``model_index.json`` and
one folder per component), loaded with
:class:`diffusers.AutoPipelineForText2Image` in the spec's quantization as
torch dtype (``fp32``, ``fp16``, ``bf16``).  Each request gives PNG files;
a ``seed`` makes the images reproducible (the same seed, the same pixels).

Sizes must be multiples of what the pipeline's latent grid allows (the VAE's
scale factor, twice that for transformer pipelines that pack 2×2 patches) and
at most ``max_pixels``; anything else is a 400 naming ``size``.  Family
defaults set the steps and guidance a model is distilled for (SD-Turbo: 1 step,
no guidance).

torch and diffusers are imported only inside :meth:`DiffusersEngine.load`, so
workers that only serve GGUF never import them.
"""

from __future__ import annotations

import inspect
import io
import logging
import random
from typing import Any

from pydantic import Field

from xnb.engines.base import Engine, EngineOptions
from xnb.engines.media import ImageRequest
from xnb.errors import InvalidRequest, LaunchFailed, UnsupportedParameter

__all__ = ["DiffusersEngine", "DiffusersOptions"]

logger = logging.getLogger(__name__)

_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "none": "float32"}


class DiffusersOptions(EngineOptions):
    """Launch options of the diffusers engine."""

    device: str | None = Field(default=None, description="torch device; default: the replica's first GPU, else cpu")
    steps: int | None = Field(default=None, ge=1, le=200, description="denoising steps when a request names none")
    guidance_scale: float | None = Field(default=None, ge=0.0, le=50.0,
                                         description="classifier-free guidance when a request names none")
    size: str | None = Field(default=None, pattern=r"^\d+x\d+$",
                             description="WIDTHxHEIGHT when a request names none; default: the pipeline's")
    max_pixels: int = Field(default=2048 * 2048, ge=64, description="largest width*height a request may ask")


class DiffusersEngine(Engine):
    name = "diffusers"
    abilities = frozenset({"image"})
    formats = frozenset({"diffusers"})
    supported_params = frozenset()
    requires = ("diffusers", "torch")
    Options = DiffusersOptions

    options: DiffusersOptions

    def load(self) -> dict[str, Any]:
        import torch
        from diffusers import AutoPipelineForText2Image

        opts = self.options
        if not (self.model_path / "model_index.json").is_file():
            raise LaunchFailed(
                f"diffusers needs a pipeline folder with model_index.json, but {self.model_path} has none"
            )
        device = opts.device or (f"cuda:{self.resources.gpus[0]}" if self.resources.gpus else "cpu")
        dtype = getattr(torch, _DTYPES.get(self.spec.quantization, "float32"))
        torch.set_num_threads(max(1, self.resources.threads))  # per process, as the other torch engines
        pipe = AutoPipelineForText2Image.from_pretrained(str(self.model_path), dtype=dtype,
                                                         local_files_only=True)
        pipe = pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        self._pipe = pipe
        self._device = device
        scale = int(getattr(pipe, "vae_scale_factor", 8) or 8)
        transformer = getattr(pipe, "transformer", None) is not None
        self._multiple = scale * 2 if transformer else scale
        self._default_size = _parse_size(opts.size) if opts.size else self._native_size(scale, transformer)
        self._images = 0
        return {
            "pipeline": type(pipe).__name__,
            "device": device,
            "dtype": str(dtype).removeprefix("torch."),
            "default_size": "%dx%d" % self._default_size,
            "size_multiple": self._multiple,
            "threads": torch.get_num_threads(),
        }

    def _native_size(self, scale: int, transformer: bool) -> tuple[int, int]:
        denoiser = getattr(self._pipe, "unet", None) or getattr(self._pipe, "transformer", None)
        sample = getattr(getattr(denoiser, "config", None), "sample_size", None)
        if isinstance(sample, (list, tuple)):
            sample = sample[0]
        side = int(sample) * scale if sample and not transformer else 1024
        return side, side

    def unload(self) -> None:
        pipe = getattr(self, "_pipe", None)
        self._pipe = None
        if pipe is not None and self._device.startswith("cuda"):
            import torch

            del pipe
            torch.cuda.empty_cache()

    def check_size(self, width: int, height: int) -> None:
        """400 naming ``size`` when the pipeline cannot draw ``width``×``height``."""
        m = self._multiple
        if width % m or height % m:
            raise InvalidRequest(
                f"size {width}x{height} is not supported by {self.spec.model_name}: width and height must be "
                f"multiples of {m} (e.g. {self._default_size[0]}x{self._default_size[1]})",
                param="size",
            )
        if width * height > self.options.max_pixels:
            raise InvalidRequest(
                f"size {width}x{height} is larger than this model allows ({self.options.max_pixels} pixels; "
                "launch option max_pixels)",
                param="size",
            )

    def image(self, request: ImageRequest) -> list[bytes]:
        import torch

        pipe = self._pipe
        if pipe is None:
            raise InvalidRequest(f"{self.spec.model_name!r} is not loaded", param="model")
        width = request.width or self._default_size[0]
        height = request.height or self._default_size[1]
        self.check_size(width, height)
        steps = request.steps or self.options.steps or 25
        guidance = request.guidance_scale
        if guidance is None:
            guidance = self.options.guidance_scale if self.options.guidance_scale is not None else 7.5
        seed = request.seed if request.seed is not None else random.randrange(2**63)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        kwargs: dict[str, Any] = {
            "prompt": request.prompt, "num_images_per_prompt": request.n, "width": width, "height": height,
            "num_inference_steps": steps, "guidance_scale": guidance, "generator": generator,
            "output_type": "pil",
        }
        if request.negative_prompt:
            if "negative_prompt" not in inspect.signature(pipe.__call__).parameters:
                raise UnsupportedParameter(
                    f"{self.spec.model_name} ({type(pipe).__name__}) takes no negative_prompt; leave it out",
                    param="negative_prompt",
                )
            kwargs["negative_prompt"] = request.negative_prompt
        with torch.inference_mode():
            images = pipe(**kwargs).images
        self._images += len(images)
        out = []
        for img in images:
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            out.append(buf.getvalue())
        return out

    def stats(self) -> dict[str, Any]:
        return {"images": getattr(self, "_images", 0)}


def _parse_size(size: str) -> tuple[int, int]:
    w, _, h = size.partition("x")
    return int(w), int(h)
