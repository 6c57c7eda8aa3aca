"""The attention kernel choice and the varlen plumbing of packed micro-batches.

The varlen kernel itself (``torch.nn.attention.varlen.varlen_attn``) is CUDA-only: here every
step around it runs for real on CPU — the kernel choice, the offsets built from collated
position ids, the transformers registration and the flattening of a model's q/k/v — with
:func:`reference_varlen_attn` (SDPA sample by sample) in the kernel's place, and is checked
against the trainer's CPU path (SDPA with the block-diagonal mask). The CUDA kernel is checked
against the same reference by the ``gpu`` test below and, in bf16 on a real model, by the GPU
suite's isolation probe (``benchmarks/gpu_suite.sh``).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from sft.sft_helpers import curated_rows
from transformers import AutoModelForImageTextToText

from medsft_pipelines.models import load_processor
from medsft_pipelines.sft import attention
from medsft_pipelines.sft.attention import (
    ATTENTION_ENV,
    SDPA,
    VARLEN,
    Seqs,
    choose_attention,
    cu_seqlens,
    reference_varlen_attn,
)
from medsft_pipelines.sft.data import ExampleEncoder, collate, shifted_targets
from medsft_pipelines.sft.isolation import isolation_probe

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


@pytest.fixture(autouse=True)
def _no_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ATTENTION_ENV, raising=False)


@pytest.fixture(scope="module")
def processor(tiny_model_dir: Path):
    return load_processor(tiny_model_dir)


@pytest.fixture(scope="module")
def examples(processor, shared_data: Path):
    encoder = ExampleEncoder(processor, 4096)
    rows = curated_rows(shared_data, n_text=6, n_image=3)
    return encoder, [encoder.encode(r) for r in rows]


@pytest.fixture(scope="module")
def models(tiny_model_dir: Path):
    """The same weights under SDPA (the trainer's CPU path) and under the varlen function."""
    sdpa = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, attn_implementation=SDPA)
    varlen = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, attn_implementation=VARLEN)
    return sdpa.eval(), varlen.eval()


def test_varlen_on_cuda_in_half_precision_for_packed_rows_else_sdpa(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pure choice (no GPU needed to decide): varlen needs CUDA, bf16/fp16, packing and a
    torch that ships the kernel (this one, 2.15, does)."""
    assert choose_attention(CUDA, torch.bfloat16, packing=True) == VARLEN
    assert choose_attention(CUDA, torch.float16, packing=True) == VARLEN
    assert choose_attention(CPU, torch.float32, packing=True) == SDPA
    assert choose_attention(CPU, torch.bfloat16, packing=True) == SDPA
    assert choose_attention(CUDA, torch.float32, packing=True) == SDPA  # the kernel is half only
    assert choose_attention(CUDA, torch.bfloat16, packing=False) == SDPA  # padding mask path
    monkeypatch.setattr(attention, "torch_varlen_attn", lambda: None)  # torch < 2.10
    assert choose_attention(CUDA, torch.bfloat16, packing=True) == SDPA
    monkeypatch.undo()

    monkeypatch.setenv(ATTENTION_ENV, "sdpa")
    assert choose_attention(CUDA, torch.bfloat16, packing=True) == SDPA
    monkeypatch.setenv(ATTENTION_ENV, "varlen")
    with pytest.raises(ValueError, match="needs CUDA"):
        choose_attention(CPU, torch.float32, packing=True)
    monkeypatch.setenv(ATTENTION_ENV, "flash")
    with pytest.raises(ValueError, match="expected auto"):
        choose_attention(CUDA, torch.bfloat16, packing=True)


@pytest.mark.parametrize("flatten", [False, True])
def test_offsets_are_the_sample_boundaries_of_collated_rows(
    models, processor, examples, flatten: bool
) -> None:
    """Rows as collate lays them out: every sample is one sequence, a row's padding another."""
    encoder, exs = examples
    rows = [exs[0:3], exs[3:5]]
    collated = collate(
        rows, processor.tokenizer.pad_token_id, models[0].model.get_rope_index, True,
        pixels=encoder.pixels, flatten=flatten,
    )  # fmt: skip
    positions = collated.inputs["position_ids"][0]
    width = positions.shape[1]
    expected = [0]
    for row in [[e for r in rows for e in r]] if flatten else rows:
        start = expected[-1]
        for ex in row:
            expected.append(expected[-1] + ex.length)
        if expected[-1] < start + width:  # the padding of a shorter row
            expected.append(start + width)
    offsets, longest = cu_seqlens(positions)
    assert offsets.dtype == torch.int32  # what the Flash-Attention kernels take
    assert offsets.tolist() == expected
    assert longest == max(b - a for a, b in itertools.pairwise(expected))


def test_offsets_of_hand_made_positions() -> None:
    positions = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5]])
    offsets, longest = cu_seqlens(positions)
    assert offsets.tolist() == [0, 3, 5, 6, 12]
    assert longest == 6


@pytest.mark.parametrize("flatten", [False, True])
def test_varlen_plumbing_matches_sdpa_with_the_block_mask(
    models, processor, examples, flatten: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A packed micro-batch (text and image samples, two rows or flattened): the varlen path
    (offsets from the position ids, q/k/v flattened to tokens, per-sample causal attention)
    gives the masked SDPA path's logits and gradients. The model's text attention takes the
    varlen branch with no mask at all, and the reference kernel runs in the CUDA kernel's
    place (CPU), once per text layer."""
    sdpa, varlen = models
    encoder, exs = examples
    calls: list[tuple[int, int]] = []

    def spy(q, k, v, seqs, **kw):
        calls.append((q.shape[0], len(seqs.offsets) - 1))
        return reference_varlen_attn(q, k, v, seqs, **kw)

    monkeypatch.setattr(attention, "reference_varlen_attn", spy)
    rows = [exs[0:4], exs[4:]]
    collated = collate(
        rows, processor.tokenizer.pad_token_id, sdpa.model.get_rope_index, True,
        pixels=encoder.pixels, flatten=flatten,
    )  # fmt: skip
    assert collated.inputs["attention_mask"] is None
    keep, targets = shifted_targets(collated.labels)
    grads = []
    for model in (sdpa, varlen):
        model.zero_grad()
        out = model(**collated.inputs, logits_to_keep=keep, use_cache=False)
        loss = F.cross_entropy(out.logits.float(), targets, reduction="sum")
        loss.backward()
        grads.append((out.logits.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (logits_a, grads_a), (logits_b, grads_b) = grads
    torch.testing.assert_close(logits_b, logits_a, atol=1e-5, rtol=1e-5)
    for name, grad in grads_a.items():
        if grad is not None:
            torch.testing.assert_close(grads_b[name], grad, atol=1e-5, rtol=1e-4, msg=name)
    layers = varlen.config.text_config.num_hidden_layers
    samples = len(exs) + (0 if flatten else 1)  # and a shorter row's padding
    width = collated.inputs["input_ids"].numel()
    assert calls == [(width, samples)] * layers  # forward only: no recompute without ckpt


@pytest.mark.parametrize("micro_batch_size", [1, 2])
def test_packed_samples_stay_isolated_under_the_varlen_function(
    models, processor, examples, micro_batch_size: int
) -> None:
    """The isolation probe (swap one packed sample; no other sample's logits move) on the
    varlen function, flattened as the trainer lays micro-batches out for it."""
    _, varlen = models
    encoder, exs = examples
    others, own = isolation_probe(
        varlen, exs[:-1], exs[-1], micro_batch_size, processor.tokenizer.pad_token_id,
        varlen.model.get_rope_index, flatten=True, pixels=encoder.pixels,
    )  # fmt: skip
    assert own > 1e-2
    assert others < 1e-5, others


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the varlen kernel is CUDA-only")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_cuda_kernel_matches_the_reference(dtype: torch.dtype) -> None:
    """torch's varlen_attn through :func:`torch_varlen_kernel` (its signature of this torch;
    grouped key/value heads as Qwen2.5-VL-7B has them) against SDPA sample by sample."""
    torch.manual_seed(0)
    lengths = [7, 300, 1, 64, 129]
    offsets = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    total = sum(lengths)
    q = torch.randn(total, 28, 128, device="cuda", dtype=dtype)
    k, v = (torch.randn(total, 4, 128, device="cuda", dtype=dtype) for _ in range(2))
    seqs = Seqs(offsets.cuda(), max(lengths))
    got = attention.torch_varlen_kernel(q, k, v, seqs, causal=True, scale=128**-0.5)
    want = reference_varlen_attn(q, k, v, seqs, causal=True, scale=128**-0.5)
    torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)


def test_qwen3_vl_hands_the_varlen_function_its_packed_positions(
    tiny_qwen3_dir: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Qwen3-VL's attention passes the text position ids through ``**kwargs`` (Qwen2.5-VL
    names them): without them the function would run SDPA unmasked over the packed row."""
    processor = load_processor(tiny_qwen3_dir)
    encoder = ExampleEncoder(processor, 4096)
    rows = curated_rows(shared_data, n_text=4, n_image=2)
    model = AutoModelForImageTextToText.from_pretrained(
        tiny_qwen3_dir, attn_implementation=VARLEN
    ).eval()
    calls: list[int] = []

    def spy(q, k, v, seqs, **kw):
        calls.append(len(seqs.offsets) - 1)
        return reference_varlen_attn(q, k, v, seqs, **kw)

    monkeypatch.setattr(attention, "reference_varlen_attn", spy)
    samples = [encoder.encode(r) for r in rows]
    others, own = isolation_probe(
        model, samples[:-1], samples[-1], 2, processor.tokenizer.pad_token_id,
        model.model.get_rope_index, flatten=True, pixels=encoder.pixels,
    )  # fmt: skip
    assert own > 1e-2 and others < 1e-5, others
    assert calls and min(calls) >= len(samples) - 1
