"""Loading a Qwen-VL processor without torchvision.

transformers 5.x builds ``Qwen2_5_VLProcessor`` with a video processor, and the video
processor needs torchvision, which the CPU trainer image does not carry (the PyPI wheel
does not load beside the CUDA/CPU torch build used here). Training and evaluation on image
QA never touch video, so :class:`ImageOnlyQwen2_5_VLProcessor` declares only the image
processor and the tokenizer as its parts: ``ProcessorMixin`` derives the parts from the
``__init__`` signature, so the video processor is neither required nor loaded. Images go
through the PIL backend of the Qwen2-VL image processor when torchvision is absent.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer
from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor


class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL processor with an image processor and a tokenizer, no video processor."""

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        chat_template: Any = None,
        **kwargs,
    ) -> None:
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


# Qwen3-VL shares the processor interface (image processor + tokenizer + chat template);
# imported lazily because older transformers releases do not ship it.
def _qwen3_vl_processor_class() -> type | None:
    try:
        from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
    except ImportError:
        return None

    class ImageOnlyQwen3VLProcessor(Qwen3VLProcessor):
        """Qwen3-VL processor with an image processor and a tokenizer, no video processor."""

        def __init__(
            self,
            image_processor: Any = None,
            tokenizer: Any = None,
            chat_template: Any = None,
            **kwargs,
        ) -> None:
            super().__init__(
                image_processor, tokenizer, None, chat_template=chat_template, **kwargs
            )

    return ImageOnlyQwen3VLProcessor


def processor_class_for(model_type: str) -> type:
    """The image-only processor class for a model type from ``config.json``."""
    if model_type in ("qwen2_5_vl", "qwen2_vl"):
        return ImageOnlyQwen2_5_VLProcessor
    if model_type in ("qwen3_vl", "qwen3_vl_moe"):
        cls = _qwen3_vl_processor_class()
        if cls is not None:
            return cls
    raise ValueError(
        f"unsupported model type {model_type!r}: medsft trains Qwen2.5-VL (and Qwen3-VL where the "
        "installed transformers ships it)"
    )


def load_processor(model_dir: str | Path, **image_kwargs: Any) -> Qwen2_5_VLProcessor:
    """Load the processor of a local Qwen-VL model directory, without torchvision.

    ``image_kwargs`` override image-processor settings (e.g. ``max_pixels``).
    """
    model_dir = Path(model_dir)
    model_type = AutoConfig.from_pretrained(model_dir).model_type
    cls = processor_class_for(model_type)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    image_processor = AutoImageProcessor.from_pretrained(model_dir, **image_kwargs)
    return cls(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=tokenizer.chat_template,
    )


def save_processor(processor: Qwen2_5_VLProcessor, out_dir: str | Path) -> None:
    """Save ``processor`` so that stock loaders (``AutoProcessor``, vLLM) can read it.

    The image-only subclass exists only because torchvision is missing here; the files name
    the stock processor class, so where torchvision is installed the usual loaders work.
    """
    out_dir = Path(out_dir)
    processor.save_pretrained(out_dir)
    stock = Qwen2_5_VLProcessor.__name__
    if type(processor).__name__ == "ImageOnlyQwen3VLProcessor":
        stock = "Qwen3VLProcessor"
    for name in ("processor_config.json", "tokenizer_config.json", "preprocessor_config.json"):
        path = out_dir / name
        if path.exists():
            data = json.loads(path.read_text())
            if "processor_class" in data:
                data["processor_class"] = stock
                path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
