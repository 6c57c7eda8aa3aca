"""The transformers engine: batched, left-padded generation on CPU, one GPU, or layers spread
over several GPUs (``device_map="auto"``, see :mod:`.layout`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig

from .base import RawOutput, Request, Sampling, TokenizerCodec, sampling_protocol
from .parallelism import plan_layout

# Tokens a model must never generate: a vision placeholder in the response would be taken for
# an image slot when the response is fed back for a forced exit.
_VISION_TOKENS = (
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


class TransformersEngine(TokenizerCodec):
    """A Hugging Face model (Qwen-VL family, or a text-only causal LM) behind :class:`Engine`."""

    def __init__(
        self, model_dir: str | Path, *, batch_size: int = 8, max_pixels: int = 262144
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

        self.batch_size = batch_size
        self.layout = plan_layout("transformers", torch.cuda.device_count())
        # Inputs go to the first GPU: with device_map="auto" the embeddings live there.
        self.device = torch.device("cuda" if self.layout.gpus else "cpu")
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        config = json.loads((Path(model_dir) / "config.json").read_text())
        self.multimodal = "vision_config" in config
        if self.multimodal:
            from medsft_pipelines.models import load_processor

            self.processor: Any = load_processor(model_dir, max_pixels=max_pixels)
            self.tokenizer = self.processor.tokenizer
            model_cls: Any = AutoModelForImageTextToText
        else:
            self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
            self.processor = self.tokenizer
            model_cls = AutoModelForCausalLM
        self.tokenizer.padding_side = "left"
        if self.layout.device_map == "auto":
            self.model = model_cls.from_pretrained(model_dir, dtype=dtype, device_map="auto")
        else:
            self.model = model_cls.from_pretrained(model_dir, dtype=dtype).to(self.device)
        self.model.eval()
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id
        generation_eos = self.model.generation_config.eos_token_id
        eos = generation_eos if generation_eos is not None else self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        # The checkpoint's generation_config.json is not the protocol (see sampling_protocol):
        # transformers would merge its repetition penalty, top-k and temperature into every
        # generate() call, even into an explicit GenerationConfig. Only its end-of-sequence
        # ids are kept (above); the model's own config is replaced by transformers' defaults.
        self.model.generation_config = GenerationConfig(
            eos_token_id=sorted(self.eos_ids), pad_token_id=self.pad_id
        )
        vocab = self.tokenizer.get_vocab()
        self.suppress = [vocab[t] for t in _VISION_TOKENS if t in vocab]

    def render(self, messages: list[dict]) -> str:
        if not self.multimodal:
            messages = [{**m, "content": _text_only(m["content"])} for m in messages]
        return self.processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )

    @torch.inference_mode()
    def generate_ids(
        self,
        requests: Sequence[Request],
        continuations: Sequence[Sequence[int]],
        max_new_tokens: int,
        sampling: Sampling,
        seed: int,
    ) -> list[RawOutput]:
        texts = [r.prompt for r in requests]
        images = [image for r in requests for image in r.images]
        if images and not self.multimodal:
            raise ValueError("this model is text-only but the items have images")
        if self.multimodal:
            inputs = self.processor(
                text=texts, images=images or None, padding=True, return_tensors="pt"
            )
        else:
            inputs = self.tokenizer(
                texts, padding=True, return_tensors="pt", add_special_tokens=False
            )
        inputs = dict(inputs)
        if any(continuations):
            inputs = _append_left_padded(inputs, continuations, self.pad_id)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        torch.manual_seed(seed)
        config = generation_config(sampling, max_new_tokens, self.eos_ids, self.pad_id)
        config.suppress_tokens = self.suppress or None
        out = self.model.generate(**inputs, generation_config=config)
        new_tokens = out[:, inputs["input_ids"].shape[1] :].tolist()
        return [self._cut(row) for row in new_tokens]

    def _cut(self, row: list[int]) -> RawOutput:
        for i, token in enumerate(row):
            if token in self.eos_ids:
                return RawOutput(row[:i], True)
        return RawOutput(row, False)


def generation_config(
    sampling: Sampling, max_new_tokens: int, eos_ids: set[int], pad_id: int
) -> GenerationConfig:
    """The whole of :func:`~.base.sampling_protocol` as a transformers ``GenerationConfig``."""
    protocol = sampling_protocol(sampling)
    options: dict[str, Any] = {"do_sample": sampling.temperature > 0}
    if sampling.temperature > 0:
        # top_k 0 turns top-k off (transformers' default is 50); the protocol has none.
        options.update(temperature=protocol["temperature"], top_p=protocol["top_p"], top_k=0)
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        repetition_penalty=protocol["repetition_penalty"],
        eos_token_id=sorted(eos_ids),
        pad_token_id=pad_id,
        **options,
    )


def _text_only(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content)


def _append_left_padded(
    inputs: dict[str, torch.Tensor], continuations: Sequence[Sequence[int]], pad_id: int
) -> dict[str, torch.Tensor]:
    """Append token ids to each left-padded row and re-pad on the left.

    Every per-token tensor (``input_ids``, ``attention_mask``, ``mm_token_type_ids`` …) is
    rebuilt; continuation tokens are text (type 0) and attended.
    """
    mask = inputs["attention_mask"].bool()
    length = inputs["input_ids"].shape[1]
    per_token = [
        k for k, v in inputs.items() if v.dim() == 2 and v.shape == (mask.shape[0], length)
    ]
    rows: dict[str, list[torch.Tensor]] = {k: [] for k in per_token}
    for b, extra in enumerate(continuations):
        extra_t = torch.tensor(list(extra), dtype=torch.long)
        for k in per_token:
            kept = inputs[k][b][mask[b]]
            fill = {"input_ids": extra_t, "attention_mask": torch.ones_like(extra_t)}.get(
                k, torch.zeros_like(extra_t)
            )
            rows[k].append(torch.cat([kept, fill.to(kept.dtype)]))
    width = max(len(r) for r in rows["input_ids"])
    out = dict(inputs)
    for k in per_token:
        pad_value = pad_id if k == "input_ids" else 0
        padded = [
            torch.cat([torch.full((width - len(r),), pad_value, dtype=r.dtype), r]) for r in rows[k]
        ]
        out[k] = torch.stack(padded)
    return out
