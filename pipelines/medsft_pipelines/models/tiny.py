"""An offline, deterministic, tiny random-initialised Qwen2.5-VL for tests and the local demo.

Same architecture and file layout as a real Qwen2.5-VL checkpoint (config.json, safetensors,
tokenizer.json with the Qwen special tokens, chat template, preprocessor config), only
small: ~0.4M parameters, built in a couple of seconds, no download. Load it back with
``Qwen2_5_VLForConditionalGeneration.from_pretrained(dir)`` (or
``AutoModelForImageTextToText``) and :func:`medsft_pipelines.models.load_processor`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForImageTextToText,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from medsft_pipelines.models.corpus import tokenizer_corpus
from medsft_pipelines.models.processor import processor_class_for, save_processor

# The Qwen2.5 special tokens, in Qwen's order, then the reasoning delimiters. The
# reasoning delimiters are ordinary added tokens (not "special"): decoding with
# skip_special_tokens=True keeps them, which the answer extractor relies on.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
THINK_TOKENS = ["<think>", "</think>"]

# Qwen2.5-VL's chat template (string content, or a list of {"type": "image"|"text"} parts).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

TINY_MODEL_VERSION = 1
"""Bump when the builder's output changes, so cached copies are rebuilt."""

TINY_VOCAB_SIZE = 1024
"""Target BPE vocabulary (bytes + merges), before the special tokens are added."""

TINY_TEXT_CONFIG = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    # head_dim 16 -> 8 rotary frequencies, split over (temporal, height, width).
    "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
}
TINY_VISION_CONFIG = {
    "depth": 2,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_heads": 4,
    "out_hidden_size": 64,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [1],
}


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE with the Qwen special tokens, trained on the built-in corpus."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    # Added after the merges, in Qwen's order, so ids follow the vocabulary like Qwen's do.
    tok.add_special_tokens(SPECIAL_TOKENS)
    tok.add_tokens(THINK_TOKENS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS,
        model_max_length=32768,
        padding_side="right",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


TINY_QWEN3_TEXT_CONFIG = {
    **{k: v for k, v in TINY_TEXT_CONFIG.items() if k != "rope_parameters"},
    "head_dim": 16,
    "rope_parameters": {
        "rope_type": "default",
        "rope_theta": 5e6,
        "mrope_section": [2, 3, 3],
        "mrope_interleaved": True,
    },
}
TINY_QWEN3_VISION_CONFIG = {
    "depth": 2,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_heads": 4,
    "out_hidden_size": 64,
    "patch_size": 16,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "num_position_embeddings": 64,
    "deepstack_visual_indexes": [0],
}
ARCHITECTURES = ("qwen2_5_vl", "qwen3_vl")


def tiny_config(tokenizer: PreTrainedTokenizerFast, arch: str = "qwen2_5_vl") -> PretrainedConfig:
    """The tiny config of ``arch``, with token ids taken from ``tokenizer``."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    # Round the embedding up like real checkpoints do (Qwen pads to a multiple of 128).
    vocab_size = -(-len(tokenizer) // 64) * 64
    text = {
        **TINY_TEXT_CONFIG,
        "vocab_size": vocab_size,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    if arch == "qwen3_vl":
        from transformers import Qwen3VLConfig

        return Qwen3VLConfig(
            text_config={**text, **TINY_QWEN3_TEXT_CONFIG},
            vision_config=dict(TINY_QWEN3_VISION_CONFIG),
            image_token_id=ids["<|image_pad|>"],
            video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"],
            vision_end_token_id=ids["<|vision_end|>"],
            tie_word_embeddings=False,
        )
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=dict(TINY_VISION_CONFIG),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def build_tiny_model(out_dir: str | Path, seed: int = 0, arch: str = "qwen2_5_vl") -> Path:
    """Write a tiny random Qwen2.5-VL (or Qwen3-VL: ``arch="qwen3_vl"``) to ``out_dir``:
    weights, tokenizer and processor.

    Deterministic for a given ``seed``. The directory is written to a temporary sibling
    and renamed into place, so a concurrent reader never sees a half-written model; if
    ``out_dir`` already holds a complete model it is returned unchanged (callers cache).
    """
    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists() and (out_dir / "model.safetensors").exists():
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {ARCHITECTURES}")
    tokenizer = build_tokenizer()
    config = tiny_config(tokenizer, arch)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config).eval()
    # Qwen2VLImageProcessorPil defaults; max_pixels well above the 262,144 the curation
    # recipe resizes to, so the processor never resizes an already-curated image again.
    if arch == "qwen3_vl":  # Qwen3-VL: 16-pixel patches, [-1, 1] normalisation
        image_processor = Qwen2VLImageProcessorPil(
            patch_size=16, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5]
        )
    else:
        image_processor = Qwen2VLImageProcessorPil()
    processor = processor_class_for(arch)(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE
    )
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}-") as tmp:
        staging = Path(tmp) / "model"
        model.save_pretrained(staging)
        save_processor(processor, staging)
        (staging / "medsft_tiny.json").write_text(json.dumps({"seed": seed}) + "\n")
        try:
            staging.rename(out_dir)
        except OSError:
            # Another process won the race and wrote the same deterministic model.
            if not (out_dir / "model.safetensors").exists():
                raise
    shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def cached_tiny_model(seed: int = 0, cache_dir: str | Path | None = None) -> Path:
    """The tiny model in a per-user cache (``$MEDSFT_CACHE`` or ``~/.cache/medsft``), built once."""
    root = Path(cache_dir or os.environ.get("MEDSFT_CACHE") or Path.home() / ".cache" / "medsft")
    return build_tiny_model(
        root / "models" / f"tiny-qwen2_5_vl-v{TINY_MODEL_VERSION}-s{seed}", seed
    )
