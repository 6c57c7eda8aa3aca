"""The offline tiny Qwen2.5-VL: loadable by stock transformers, deterministic, image-aware."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText

from medsft_pipelines.models import build_tiny_model, load_processor

MESSAGES = [
    {
        "role": "user",
        "content": [{"type": "image"}, {"type": "text", "text": "Is the heart enlarged?"}],
    },
    {"role": "assistant", "content": "<think>The outline looks normal.</think>Answer: no"},
]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_loads_with_stock_classes_and_runs_on_an_image(any_tiny_model: Path) -> None:
    model = AutoModelForImageTextToText.from_pretrained(any_tiny_model)
    expected = json.loads((any_tiny_model / "config.json").read_text())["architectures"][0]
    assert type(model).__name__ == expected
    assert sum(p.numel() for p in model.parameters()) < 1_000_000

    processor = load_processor(any_tiny_model)
    text = processor.apply_chat_template(MESSAGES, tokenize=False)
    assert text.startswith("<|im_start|>system\n")
    assert "<|vision_start|><|image_pad|><|vision_end|>" in text

    batch = processor(
        text=[text], images=[Image.new("RGB", (56, 56), (200, 10, 10))], return_tensors="pt"
    )
    # 56x56 pixels -> 4x4 patches (of 14 px; Qwen3-VL: resized to 64 px, patches of 16)
    # -> 2x2 merged tokens.
    assert int((batch["input_ids"] == model.config.image_token_id).sum()) == 4
    assert "mm_token_type_ids" in batch
    out = model(**batch, labels=batch["input_ids"])
    assert torch.isfinite(out.loss)
    # Random init over a ~1k vocabulary: loss near log(vocab).
    assert (
        abs(out.loss.item() - torch.log(torch.tensor(float(model.config.text_config.vocab_size))))
        < 1.0
    )


def test_think_tokens_survive_decoding_and_special_ids_match_config(tiny_model_dir: Path) -> None:
    processor = load_processor(tiny_model_dir)
    tok = processor.tokenizer
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert tok.convert_tokens_to_ids("<|image_pad|>") == config["image_token_id"]
    assert tok.convert_tokens_to_ids("<|vision_start|>") == config["vision_start_token_id"]
    assert tok.eos_token == "<|im_end|>"
    ids = tok("<think>why</think>Answer: B<|im_end|>")["input_ids"]
    assert tok.convert_tokens_to_ids("<think>") in ids
    assert tok.decode(ids, skip_special_tokens=True) == "<think>why</think>Answer: B"
    # Files name the stock processor class, so AutoProcessor works where torchvision exists.
    assert json.loads((tiny_model_dir / "processor_config.json").read_text())[
        "processor_class"
    ] == ("Qwen2_5_VLProcessor")


def test_qwen3_vl_variant(tiny_qwen3_dir: Path) -> None:
    config = json.loads((tiny_qwen3_dir / "config.json").read_text())
    assert config["model_type"] == "qwen3_vl"
    assert json.loads((tiny_qwen3_dir / "processor_config.json").read_text())[
        "processor_class"
    ] == ("Qwen3VLProcessor")


def test_build_is_deterministic_and_seeded(tiny_model_dir: Path, tmp_path: Path) -> None:
    again = build_tiny_model(tmp_path / "again", seed=0)
    other = build_tiny_model(tmp_path / "other", seed=1)
    assert _sha(again / "model.safetensors") == _sha(tiny_model_dir / "model.safetensors")
    assert _sha(again / "tokenizer.json") == _sha(tiny_model_dir / "tokenizer.json")
    assert _sha(other / "model.safetensors") != _sha(tiny_model_dir / "model.safetensors")
    # A complete directory is reused, not rebuilt.
    mtime = (again / "model.safetensors").stat().st_mtime_ns
    build_tiny_model(tmp_path / "again", seed=0)
    assert (again / "model.safetensors").stat().st_mtime_ns == mtime


def test_build_tiny_command(tiny_model_dir: Path, tmp_path: Path) -> None:
    """What ``medsft run --local`` runs when its model folder is absent."""
    out = tmp_path / "tiny-qwen2_5_vl"
    subprocess.run(
        [sys.executable, "-m", "medsft_pipelines.models", "build-tiny", str(out)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    assert _sha(out / "model.safetensors") == _sha(tiny_model_dir / "model.safetensors")
