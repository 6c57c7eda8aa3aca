"""The vLLM engine (GPU): same interface and results as the transformers engine, faster.

vLLM schedules its own continuous batches, so :attr:`VLLMEngine.batch_size` is large; the
forced-exit pass re-submits the prompt text plus the decoded reasoning and the end-of-think
token. Sampling seeds are per request (``seed`` + position), so results do not depend on how
vLLM groups requests.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .base import RawOutput, Request, Sampling, TokenizerCodec, sampling_protocol
from .parallelism import head_counts, plan_layout

_VISION_TOKENS = [
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]


class VLLMEngine(TokenizerCodec):
    """A model served in-process by ``vllm.LLM``."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        batch_size: int = 1024,
        max_pixels: int = 262144,
        max_images: int = 10,
    ) -> None:
        try:
            import torch
            from vllm import LLM
        except ImportError as exc:  # the CPU image does not carry vLLM
            raise RuntimeError(
                "backend 'vllm' needs the vllm package (GPU image); use 'transformers'"
            ) from exc
        self.batch_size = max(batch_size, 1024)
        config = json.loads((Path(model_dir) / "config.json").read_text())
        # Every GPU of the pod through tensor parallelism (see .layout for why not replicas).
        self.layout = plan_layout("vllm", torch.cuda.device_count(), head_counts(config))
        self.llm = LLM(
            model=str(model_dir),
            tensor_parallel_size=self.layout.tensor_parallel,
            limit_mm_per_prompt={"image": max_images},
            mm_processor_kwargs={"max_pixels": max_pixels},
            seed=0,
        )
        self.tokenizer: Any = self.llm.get_tokenizer()
        eos = self.tokenizer.eos_token_id
        self.eos_ids = {eos} if eos is not None else set()

    def render(self, messages: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )

    def generate_ids(
        self,
        requests: Sequence[Request],
        continuations: Sequence[Sequence[int]],
        max_new_tokens: int,
        sampling: Sampling,
        seed: int,
    ) -> list[RawOutput]:
        from vllm import SamplingParams

        prompts = []
        for request, extra in zip(requests, continuations, strict=True):
            text = request.prompt + (
                self.tokenizer.decode(list(extra), skip_special_tokens=False) if extra else ""
            )
            prompt: dict[str, Any] = {"prompt": text}
            if request.images:
                prompt["multi_modal_data"] = {"image": list(request.images)}
            prompts.append(prompt)
        bad_words = _bad_words(SamplingParams)
        params = [
            SamplingParams(**sampling_options(sampling, max_new_tokens, seed + i), **bad_words)
            for i in range(len(prompts))
        ]
        outputs = self.llm.generate(prompts, sampling_params=params, use_tqdm=False)
        results = []
        for output in outputs:
            completion = output.outputs[0]
            ids = list(completion.token_ids)
            while ids and ids[-1] in self.eos_ids:
                ids.pop()
            results.append(RawOutput(ids, completion.finish_reason == "stop"))
        return results


def sampling_options(sampling: Sampling, max_new_tokens: int, seed: int) -> dict[str, Any]:
    """The whole of :func:`~.base.sampling_protocol` as ``SamplingParams`` keywords: every
    setting explicit, so no default of vLLM's version decides one. ``LLM.generate`` with
    explicit params applies none of the checkpoint's sampling defaults (only its end-of-sequence
    ids, which stay: they end a response, they do not change how it is sampled)."""
    protocol = sampling_protocol(sampling)
    return {
        "max_tokens": max_new_tokens,
        "seed": seed,
        "temperature": protocol["temperature"],
        "top_p": protocol["top_p"],
        "min_p": protocol["min_p"],
        "repetition_penalty": protocol["repetition_penalty"],
        "presence_penalty": protocol["presence_penalty"],
        "frequency_penalty": protocol["frequency_penalty"],
    }


def _bad_words(cls: Any) -> dict[str, Any]:
    try:  # older vLLM has no bad_words
        cls(bad_words=_VISION_TOKENS)
    except TypeError:
        return {}
    return {"bad_words": _VISION_TOKENS}
