"""Which attention kernel the trainer runs, and the varlen kernel for packed micro-batches.

Packed rows (:func:`medsft_pipelines.sft.data.collate`) restart their text position ids at
every sample. Under SDPA, transformers turns those resets into a dense block-diagonal mask:
at 16k-token rows every masked block is still computed and the mask itself is stored. On a
GPU the trainer instead registers :func:`varlen_attention_forward` with transformers
(``AttentionInterface``) under the name :data:`VARLEN`: it cuts the flattened tokens at the
same resets into cumulative sequence offsets (``cu_seqlens``) and runs PyTorch's own
Flash-Attention varlen kernel (``torch.nn.attention.varlen.varlen_attn``, torch >= 2.10), which
computes only each sample's causal triangle. flash-attn itself is not needed (it has no
binary wheel; building it for sm80/sm90 takes hours).

transformers hands a registered function the text position ids of the packed rows
(``position_ids``, ``[B, L]``) and, since the name has no mask function of its own
(``AttentionMaskInterface``), no mask: nothing dense is ever built. The vision tower's
attention, unpacked rows and anything else without those position ids take SDPA unchanged.

On CPU the varlen kernel does not exist; the same plumbing runs with
:func:`reference_varlen_attn` (SDPA sample by sample), which is what the CPU tests check
against the masked SDPA path. The trainer's CPU path stays SDPA with the block-diagonal mask.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

log = logging.getLogger("medsft.sft.attention")

VARLEN = "medsft_varlen"
"""The ``attn_implementation`` name of :func:`varlen_attention_forward` (no "flash" in it: the
Qwen-VL vision towers would otherwise call it with their own ``cu_seqlens`` keywords)."""
SDPA = "sdpa"
ATTENTION_ENV = "MEDSFT_ATTENTION"
"""``auto`` (default), ``varlen`` or ``sdpa``: an operator's override of :func:`choose_attention`
(e.g. to compare kernels, or to fall back if a GPU generation's varlen kernel misbehaves)."""

Kernel = Callable[..., torch.Tensor]
"""``(q[T,H,D], k[T,Hkv,D], v[T,Hkv,D], Seqs, *, causal, scale) -> out[T,H,D]``."""


class Seqs(NamedTuple):
    """The packed sequences of flattened tokens, as the Flash-Attention kernels take them."""

    offsets: Tensor
    """Cumulative sequence offsets (``cu_seqlens``), int32 ``[N+1]``."""
    max_len: int
    """The longest sequence."""


def torch_varlen_attn() -> Callable[..., torch.Tensor] | None:
    """``torch.nn.attention.varlen.varlen_attn`` when this torch ships it (>= 2.10)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def choose_attention(device: torch.device, dtype: torch.dtype, packing: bool) -> str:
    """The ``attn_implementation`` the trainer loads the model with.

    Varlen for packed micro-batches on CUDA in half precision (the kernel is CUDA-only and
    bf16/fp16-only) when torch has it; SDPA otherwise: on CPU (with the block-diagonal mask
    for packed rows) and for unpacked rows (a padding mask; nothing to skip but padding).
    """
    wanted = os.environ.get(ATTENTION_ENV, "auto")
    if wanted not in ("auto", "varlen", SDPA):
        raise ValueError(f"{ATTENTION_ENV}={wanted!r}: expected auto, varlen or sdpa")
    fits = (
        device.type == "cuda"
        and dtype in (torch.bfloat16, torch.float16)
        and torch_varlen_attn() is not None
    )
    if wanted == "varlen" and not fits:
        raise ValueError(
            f"{ATTENTION_ENV}=varlen needs CUDA, bf16/fp16 and torch >= 2.10 "
            f"(have {device.type}, {dtype}, torch {torch.__version__})"
        )
    if wanted == SDPA or not packing:
        return SDPA
    return VARLEN if fits else SDPA


def cu_seqlens(position_ids: torch.Tensor) -> Seqs:
    """Cumulative offsets of the sequences of packed rows, flattened row after row, and the
    longest sequence: ``[B, L]`` position ids -> (int32 ``[N+1]``, max length).

    A sequence starts at each row's start and wherever positions do not continue by one
    (transformers' own packed-sequence rule, ``find_packed_sequence_indices``). A row's padding
    restarts at 0 too (see ``collate``), so it is a sequence of its own and attends only to
    itself. One host sync (the max length): once per forward, see :class:`_Offsets`.
    """
    if position_ids.ndim != 2:
        raise ValueError(f"expected [batch, length] position ids, got {tuple(position_ids.shape)}")
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    first = starts.reshape(-1).nonzero().flatten()
    total = torch.tensor([position_ids.numel()], device=position_ids.device)
    offsets = torch.cat([first, total]).to(torch.int32)
    return Seqs(offsets, int((offsets[1:] - offsets[:-1]).max()))


class _Offsets:
    """The offsets of the last forward's position ids. Every decoder layer receives the same
    ``position_ids`` tensor, so they are computed (and the host synced) once per forward, not
    once per layer. Holding the tensor keeps its identity from being reused."""

    def __init__(self) -> None:
        self._key: torch.Tensor | None = None
        self._value: Seqs | None = None

    def __call__(self, position_ids: torch.Tensor) -> Seqs:
        if self._key is not position_ids or self._value is None:
            self._key, self._value = position_ids, cu_seqlens(position_ids)
        return self._value


_offsets = _Offsets()


def reference_varlen_attn(
    q: Tensor, k: Tensor, v: Tensor, seqs: Seqs, *, causal: bool, scale: float | None
) -> Tensor:
    """What the varlen kernel computes, by SDPA on each sequence alone (any device, any
    dtype; slow). The CPU stand-in for the CUDA kernel, and the tests' reference."""
    rep = q.shape[1] // k.shape[1]
    outs = []
    bounds = seqs.offsets.tolist()
    for start, end in itertools.pairwise(bounds):
        qs, ks, vs = (t[start:end].transpose(0, 1)[None] for t in (q, k, v))
        ks, vs = ks.repeat_interleave(rep, dim=1), vs.repeat_interleave(rep, dim=1)
        out = F.scaled_dot_product_attention(qs, ks, vs, is_causal=causal, scale=scale)
        outs.append(out[0].transpose(0, 1))
    return torch.cat(outs)


def torch_varlen_kernel(
    q: Tensor, k: Tensor, v: Tensor, seqs: Seqs, *, causal: bool, scale: float | None
) -> Tensor:
    """``varlen_attn`` across its signatures: 2.10 takes ``is_causal``; 2.11 takes
    ``window_size`` and ``scale``; 2.12+ also ``enable_gqa`` (before, grouped key/value heads
    are repeated here, as transformers' ``repeat_kv`` does)."""
    varlen_attn = torch_varlen_attn()
    assert varlen_attn is not None
    params = _parameters(varlen_attn)
    kwargs: dict[str, Any] = {}
    if "window_size" in params:
        kwargs["window_size"] = (-1, 0) if causal else (-1, -1)
    else:
        kwargs["is_causal"] = causal
    if "scale" in params:
        kwargs["scale"] = scale
    elif scale is not None and abs(scale - q.shape[-1] ** -0.5) > 1e-12:
        raise ValueError("this torch's varlen_attn has no scale argument")
    if k.shape[1] != q.shape[1]:
        if "enable_gqa" in params:
            kwargs["enable_gqa"] = True
        else:
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    offsets = seqs.offsets.to(q.device)
    return varlen_attn(q, k, v, offsets, offsets, seqs.max_len, seqs.max_len, **kwargs)


_PARAMS: dict[Any, frozenset[str]] = {}


def _parameters(fn: Callable[..., Any]) -> frozenset[str]:
    if fn not in _PARAMS:
        _PARAMS[fn] = frozenset(inspect.signature(fn).parameters)
    return _PARAMS[fn]


def varlen_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    position_ids: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function contract: ``query [B, H, L, D]``, ``key/value
    [B, Hkv, L, D]`` in, ``(out [B, L, H, D], None)`` back.

    Packed text rows (text position ids, no mask, more than one token) run varlen on the
    flattened tokens; the CUDA kernel on CUDA tensors, :func:`reference_varlen_attn`
    elsewhere. Everything else (the vision tower's per-image calls, a padding mask,
    decoding) is SDPA's, unchanged.
    """
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if position_ids is None or attention_mask is not None or query.shape[2] == 1:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
            is_causal=is_causal, **kwargs,
        )  # fmt: skip
    if dropout:
        raise ValueError("varlen attention here has no dropout (Qwen-VL trains without)")
    batch, heads, length, dim = query.shape
    if position_ids.shape[0] != batch:
        position_ids = position_ids.expand(batch, -1)
    seqs = _offsets(position_ids)

    def tokens(t: torch.Tensor) -> torch.Tensor:  # [B, H, L, D] -> [B*L, H, D]
        return t.transpose(1, 2).reshape(batch * length, t.shape[1], dim)

    kernel: Kernel = torch_varlen_kernel if query.is_cuda else reference_varlen_attn
    out = kernel(tokens(query), tokens(key), tokens(value), seqs, causal=causal, scale=scaling)
    return out.reshape(batch, length, heads, dim), None


AttentionInterface.register(VARLEN, varlen_attention_forward)


def flattens_packed_rows(attn_implementation: str) -> bool:
    """Whether packed micro-batches go to the model as one flat row: under the varlen kernels
    (ours, or flash-attn's) a row holds any number of samples and needs no padding."""
    return attn_implementation == VARLEN or "flash_attention" in attn_implementation
