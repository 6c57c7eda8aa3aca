"""From curated rows to training micro-batches: chat rendering, loss masks, packing, resume.

Row shape read from the dataset shards (what curation writes)
-------------------------------------------------------------
A row is a mapping with at least:

* ``id`` (str) — unique sample id; used in batch fingerprints, never logged with content.
* ``images`` (list of bytes, may be empty) — encoded PNG/JPEG, in the order they appear.
* ``messages`` (list of ``{"role", "content"}``) — the rendered conversation. The assistant
  content is ``"<think>…</think>"`` followed by the final answer. ``content`` is a string,
  or a list of parts ``{"type": "text", "text": …}`` / ``{"type": "image"}`` (Qwen style)
  that places the images explicitly. With string content, the images go before the text of
  the first user turn (where Qwen-VL puts them by default).

Other curated columns (source, task_type, question, options, answer, …) are ignored here.

Pipeline
--------
1. :class:`ExampleEncoder` renders the chat with the model's own template, runs the
   processor (image tokens included), and labels only the assistant turns (their content
   and the closing ``<|im_end|>``). Over-long samples are dropped or truncated as configured,
   and counted in :class:`DataStats`.
2. :func:`first_fit_decreasing` packs encoded examples into rows of at most
   ``max_seq_length`` tokens; without packing, each row holds one example.
3. :func:`group_micro_batches` forms micro-batches (rows of similar length together when
   length grouping is on) and shuffles their order deterministically.
4. :class:`MicroBatchStream` does 1-3 over fixed-size *chunks* of the rank's sample stream,
   so that every batch carries a :class:`DataPosition` (epoch, chunk start, batch index in
   chunk) from which the exact same batch sequence can be regenerated after a restart.
5. :func:`collate` builds model inputs. Packed rows get no attention mask and
   ``position_ids`` of shape ``[4, B, L]``: row 0 restarts at 0 for every sample (transformers
   derives the block-diagonal mask — or flash-attention varlen boundaries — from it), rows
   1-3 are Qwen-VL's 3-D rope positions, computed per sample. Unpacked rows use the plain
   padded path (attention mask, positions computed by the model). A micro-batch without
   images gets a tiny loss-free image segment, so all ranks run the same modules in the same
   order (a DeepSpeed requirement, see :func:`collate`).
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from PIL import Image

IGNORE_INDEX = -100
"""Label of tokens that do not contribute to the loss (prompt, images, padding)."""

RopeIndexFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]
"""``model.model.get_rope_index``: (input_ids[1,L], mm_token_type_ids[1,L], image_grid_thw)
-> (positions[3,1,L], deltas)."""


@dataclass
class DataStats:
    """Counted data events, reported in metrics and progress (never silently dropped)."""

    samples_seen: int = 0
    """Rows read from the shards."""
    samples_used: int = 0
    """Rows encoded into examples."""
    overlong_dropped: int = 0
    """Rows longer than the maximum sequence length, dropped."""
    overlong_truncated: int = 0
    """Rows longer than the maximum sequence length, truncated."""
    no_target_dropped: int = 0
    """Rows with no assistant token left to learn from (e.g. truncated away), dropped."""

    def copy(self) -> DataStats:
        return DataStats(**self.__dict__)


@dataclass
class Example:
    """One encoded sample: token ids, loss labels and its images' pixels."""

    sample_id: str
    input_ids: torch.Tensor
    """[L] token ids, image placeholders expanded."""
    labels: torch.Tensor
    """[L] = input_ids on assistant tokens, IGNORE_INDEX elsewhere."""
    mm_token_type_ids: torch.Tensor
    """[L] 0 text, 1 image (Qwen-VL needs it for 3-D rope positions)."""
    image_grid_thw: torch.Tensor | None = None
    """[n_images, 3] patch grid of each image."""
    images: list[bytes] = field(default_factory=list)
    """The encoded images; decoded into pixels only when the micro-batch is collated (a
    packing window of a few thousand samples would otherwise hold gigabytes of floats)."""
    pixel_values: torch.Tensor | None = None
    """[patches, C*T*P*P] flattened patches of all the sample's images, once loaded."""

    @property
    def length(self) -> int:
        return int(self.input_ids.numel())

    @property
    def num_targets(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())


def _images_first(messages: list[dict[str, Any]], n_images: int) -> list[dict[str, Any]]:
    """Messages in Qwen part format, with ``n_images`` image parts placed as the row says."""
    out: list[dict[str, Any]] = []
    placed = 0
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            parts: list[dict[str, Any]] = [{"type": "text", "text": content}]
            if message["role"] == "user" and placed == 0 and n_images:
                parts = [{"type": "image"}] * n_images + parts
                placed = n_images
        else:
            parts = [dict(p) for p in content]
            placed += sum(1 for p in parts if p.get("type") == "image")
        out.append({"role": message["role"], "content": parts})
    if placed != n_images:
        raise ValueError(f"row has {n_images} images but its messages place {placed}")
    return out


def decode_images(images: Sequence[bytes]) -> list[Image.Image]:
    """Encoded image bytes -> RGB PIL images."""
    decoded = []
    for data in images:
        with Image.open(io.BytesIO(data)) as im:
            decoded.append(im.convert("RGB"))
    return decoded


class ExampleEncoder:
    """Renders and tokenises rows with the model's processor; labels assistant turns only."""

    def __init__(
        self,
        processor: Any,
        max_seq_length: int,
        overlong: Literal["drop", "truncate"] = "drop",
    ) -> None:
        self.processor = processor
        self.max_seq_length = max_seq_length
        self.overlong = overlong
        tok = processor.tokenizer
        self.im_start_id = tok.convert_tokens_to_ids("<|im_start|>")
        self.im_end_id = tok.convert_tokens_to_ids("<|im_end|>")
        self.image_token_id = tok.convert_tokens_to_ids("<|image_pad|>")
        # Special tokens split the text before BPE, so the header after <|im_start|> always
        # tokenises the same way.
        self.assistant_header = tok.encode("assistant\n", add_special_tokens=False)
        self.stats = DataStats()

    def assistant_labels(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Labels equal to ``input_ids`` inside assistant turns (content + ``<|im_end|>``)."""
        ids = input_ids.tolist()
        labels = [IGNORE_INDEX] * len(ids)
        header = self.assistant_header
        i = 0
        while i < len(ids):
            if ids[i] == self.im_start_id and ids[i + 1 : i + 1 + len(header)] == header:
                j = i + 1 + len(header)
                while j < len(ids) and ids[j] != self.im_end_id:
                    labels[j] = ids[j]
                    j += 1
                if j < len(ids):
                    labels[j] = ids[j]  # learn to stop
                i = j
            i += 1
        return torch.tensor(labels, dtype=torch.long)

    def encode(self, row: Mapping[str, Any]) -> Example | None:
        """The row as an :class:`Example`, or None when it is dropped (counted in ``stats``)."""
        self.stats.samples_seen += 1
        images = decode_images(row.get("images") or [])
        messages = _images_first(list(row["messages"]), len(images))
        text = self.processor.apply_chat_template(messages, tokenize=False)
        batch = self.processor(text=[text], images=images or None, return_tensors="pt")
        input_ids = batch["input_ids"][0]
        mm_types = batch.get("mm_token_type_ids")
        mm_types = (
            mm_types[0] if mm_types is not None else (input_ids == self.image_token_id).long()
        )
        labels = self.assistant_labels(input_ids)
        example = Example(
            sample_id=str(row["id"]),
            input_ids=input_ids,
            labels=labels,
            mm_token_type_ids=mm_types.long(),
            image_grid_thw=batch.get("image_grid_thw"),
            images=list(row.get("images") or []),
        )
        if example.length > self.max_seq_length:
            if self.overlong == "drop" or not self._truncate(example):
                self.stats.overlong_dropped += 1
                return None
            self.stats.overlong_truncated += 1
        if example.num_targets == 0:
            self.stats.no_target_dropped += 1
            return None
        self.stats.samples_used += 1
        return example

    def pixels(self, example: Example) -> torch.Tensor:
        """The example's pixel patches (the image processor run again on its images)."""
        out = self.processor.image_processor(
            images=decode_images(example.images), return_tensors="pt"
        )
        if not torch.equal(out["image_grid_thw"], example.image_grid_thw):
            raise ValueError(f"sample {example.sample_id}: image grid changed between passes")
        return out["pixel_values"]

    def vision_filler(self) -> Example:
        """The smallest image the processor makes, as a segment with no loss (see :func:`collate`)."""
        tok = self.processor.tokenizer
        image_processor = self.processor.image_processor
        side = image_processor.patch_size * image_processor.merge_size
        pixels = image_processor(images=[Image.new("RGB", (side, side))], return_tensors="pt")
        grid = pixels["image_grid_thw"]
        n_tokens = int(grid.prod()) // image_processor.merge_size**2
        start, end = (tok.convert_tokens_to_ids(t) for t in ("<|vision_start|>", "<|vision_end|>"))
        ids = torch.tensor([start] + [self.image_token_id] * n_tokens + [end], dtype=torch.long)
        return Example(
            sample_id="",
            input_ids=ids,
            labels=torch.full_like(ids, IGNORE_INDEX),
            mm_token_type_ids=(ids == self.image_token_id).long(),
            pixel_values=pixels["pixel_values"],
            image_grid_thw=grid,
        )

    def _truncate(self, example: Example) -> bool:
        """Cut the tail to ``max_seq_length``; False if that would cut into an image."""
        keep = self.max_seq_length
        if bool((example.mm_token_type_ids[keep:] != 0).any()):
            return False  # an image's tokens must stay whole (pixels and tokens must match)
        example.input_ids = example.input_ids[:keep]
        example.labels = example.labels[:keep]
        example.mm_token_type_ids = example.mm_token_type_ids[:keep]
        return True


# -- packing and batching ---------------------------------------------------------------------


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Pack items (indices into ``lengths``) into bins of at most ``capacity`` tokens.

    First-fit decreasing: deterministic, within 11/9 of the optimal bin count, and in
    practice > 98 % full for chat-length distributions and a window of a few hundred items.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[int] = []
    for i in order:
        if lengths[i] > capacity:
            raise ValueError(f"item of {lengths[i]} tokens exceeds the capacity {capacity}")
        for b, room in enumerate(free):
            if lengths[i] <= room:
                bins[b].append(i)
                free[b] -= lengths[i]
                break
        else:
            bins.append([i])
            free.append(capacity - lengths[i])
    return bins


def group_micro_batches(
    row_lengths: Sequence[int], micro_batch_size: int, by_length: bool, rng: random.Random
) -> list[list[int]]:
    """Micro-batches of row indices; with ``by_length``, rows of similar length together.

    The batch order is shuffled with ``rng`` either way, so long and short batches mix.
    """
    order = list(range(len(row_lengths)))
    if by_length:
        order.sort(key=lambda i: (row_lengths[i], i))
    batches = [order[i : i + micro_batch_size] for i in range(0, len(order), micro_batch_size)]
    rng.shuffle(batches)
    return batches


@dataclass(frozen=True)
class DataPosition:
    """Where a rank is in its data stream; enough to regenerate the next batch exactly."""

    epoch: int = 0
    chunk_start: int = 0
    """Sample offset (in this rank's partition of the epoch) where the current chunk begins."""
    batch_in_chunk: int = 0
    """Micro-batches of the current chunk already consumed."""


@dataclass
class MicroBatch:
    """Rows of examples (several per row when packed) plus where the stream continues."""

    rows: list[list[Example]]
    next_position: DataPosition
    resume_stats: DataStats
    """Encoder counters as of the start of the chunk ``next_position`` points into: what a
    checkpoint saves, since resuming re-encodes (and so re-counts) that chunk."""

    @property
    def sample_ids(self) -> list[str]:
        return [ex.sample_id for row in self.rows for ex in row]

    @property
    def real_tokens(self) -> int:
        return sum(ex.length for row in self.rows for ex in row)


@dataclass
class BatchPlan:
    """How micro-batches are formed (from the training spec)."""

    micro_batch_size: int
    max_seq_length: int
    packing: bool = True
    length_grouping: bool = True
    chunk_samples: int = 2048
    """Samples read per packing/grouping window: larger packs tighter (see
    benchmarks/sft_packing.py: 512 -> 97-98 %, 2048 -> 98.7-99.5 % full rows) and holds more
    token ids in memory (pixels are loaded per micro-batch)."""


SampleSource = Callable[[int, int], Iterable[Mapping[str, Any]]]
"""(epoch, start) -> this rank's rows of that epoch from sample offset ``start``."""


class MicroBatchStream:
    """Deterministic, resumable micro-batches of one rank, chunk by chunk."""

    def __init__(self, source: SampleSource, encoder: ExampleEncoder, plan: BatchPlan, seed: int):
        self.source = source
        self.encoder = encoder
        self.plan = plan
        self.seed = seed

    def _chunk_batches(self, examples: list[Example], epoch: int, chunk_start: int):
        plan = self.plan
        lengths = [ex.length for ex in examples]
        if plan.packing:
            rows = [
                [examples[i] for i in b] for b in first_fit_decreasing(lengths, plan.max_seq_length)
            ]
        else:
            rows = [[ex] for ex in examples]
        rng = random.Random(f"{self.seed}/{epoch}/{chunk_start}")
        row_lengths = [sum(ex.length for ex in row) for row in rows]
        groups = group_micro_batches(row_lengths, plan.micro_batch_size, plan.length_grouping, rng)
        return [[rows[i] for i in g] for g in groups]

    def iter_epoch(self, position: DataPosition) -> Iterator[MicroBatch]:
        """Micro-batches of ``position.epoch`` from ``position`` on, until the rank's data ends.

        Batches of the chunk at ``position.chunk_start`` before ``position.batch_in_chunk`` are
        rebuilt (the chunk is re-read and re-encoded) and skipped.
        """
        epoch, chunk_start, skip = position.epoch, position.chunk_start, position.batch_in_chunk
        rows = iter(self.source(epoch, chunk_start))
        while True:
            raw = [row for _, row in zip(range(self.plan.chunk_samples), rows, strict=False)]
            if not raw:
                return
            chunk_end = chunk_start + len(raw)
            stats_before = self.encoder.stats.copy()
            examples = [ex for ex in map(self.encoder.encode, raw) if ex is not None]
            stats_after = self.encoder.stats.copy()
            batches = self._chunk_batches(examples, epoch, chunk_start)
            for index in range(skip, len(batches)):
                last = index + 1 == len(batches)
                after = (
                    DataPosition(epoch, chunk_end, 0)
                    if last
                    else DataPosition(epoch, chunk_start, index + 1)
                )
                yield MicroBatch(batches[index], after, stats_after if last else stats_before)
            chunk_start, skip = chunk_end, 0


# -- collation --------------------------------------------------------------------------------


@dataclass
class Collated:
    """Model inputs of one micro-batch, plus the accounting the trainer reports."""

    inputs: dict[str, Any]
    labels: torch.Tensor
    sample_ids: list[str]
    real_tokens: int
    """Tokens of actual samples."""
    padded_tokens: int
    """Tokens processed including padding (batch x longest row)."""
    target_tokens: int
    """Tokens that contribute to the loss."""
    extra: dict[str, Any] = field(default_factory=dict)


PixelLoader = Callable[[Example], torch.Tensor]
"""``ExampleEncoder.pixels``: an example's pixel patches."""


def _cat_images(examples: list[Example], pixels: PixelLoader | None) -> dict[str, torch.Tensor]:
    with_images = [ex for ex in examples if ex.image_grid_thw is not None]
    if not with_images:
        return {}
    patches = []
    for ex in with_images:
        if ex.pixel_values is None:
            if pixels is None:
                raise ValueError("examples with images need a pixel loader")
            patches.append(pixels(ex))
        else:
            patches.append(ex.pixel_values)
    grids = [ex.image_grid_thw for ex in with_images]
    return {"pixel_values": torch.cat(patches), "image_grid_thw": torch.cat(grids)}


def collate(
    rows: list[list[Example]],
    pad_token_id: int,
    rope_index: RopeIndexFn | None,
    packed: bool,
    vision_filler: Example | None = None,
    pixels: PixelLoader | None = None,
) -> Collated:
    """Pad rows to the longest one and build the model inputs (see the module docstring).

    ``vision_filler`` (see :meth:`ExampleEncoder.vision_filler`) is appended to the first row
    of a micro-batch without images, so every micro-batch runs the vision tower at the same
    point of the forward pass. DeepSpeed ZeRO reduces (stage 2) or gathers (stage 3) per
    parameter in the order backward/forward reaches them, and that order must be the same on
    every rank: a rank skipping the vision tower desynchronises the collectives (gloo reports
    "Received data size doesn't match expected size"; NCCL hangs). The filler sits at the end
    of the row, after every real token, so causal attention keeps it invisible to them, and
    it has no labels: the loss does not change.
    """
    rows = [list(row) for row in rows]
    has_images = any(ex.image_grid_thw is not None for row in rows for ex in row)
    if vision_filler is not None and not has_images:
        rows[0].append(vision_filler)
    width = max(sum(ex.length for ex in row) for row in rows)
    batch = len(rows)
    input_ids = torch.full((batch, width), pad_token_id, dtype=torch.long)
    labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
    mm_types = torch.zeros((batch, width), dtype=torch.long)
    attention_mask = torch.zeros((batch, width), dtype=torch.long)
    positions = torch.zeros((4, batch, width), dtype=torch.long)
    if packed and rope_index is None:
        raise ValueError("packed batches need the model's rope index function")

    for b, row in enumerate(rows):
        offset = 0
        for ex in row:
            span = slice(offset, offset + ex.length)
            input_ids[b, span] = ex.input_ids
            labels[b, span] = ex.labels
            mm_types[b, span] = ex.mm_token_type_ids
            attention_mask[b, span] = 1
            if packed:
                assert rope_index is not None
                positions[0, b, span] = torch.arange(ex.length)
                rope, _ = rope_index(
                    input_ids=ex.input_ids[None],
                    mm_token_type_ids=ex.mm_token_type_ids[None],
                    image_grid_thw=ex.image_grid_thw,
                )
                positions[1:, b, span] = rope[:, 0]
            offset += ex.length
        # Padding is one more "sequence" (positions restart), so it attends only to itself.
        positions[:, b, offset:] = torch.arange(width - offset)

    examples = [ex for row in rows for ex in row]
    inputs: dict[str, Any] = _cat_images(examples, pixels)
    inputs.update(input_ids=input_ids, mm_token_type_ids=mm_types)
    if packed:
        inputs.update(position_ids=positions, attention_mask=None)
    else:
        # The plain padded path: a padding mask, positions computed by the model.
        inputs.update(attention_mask=attention_mask)
    real = [ex for ex in examples if ex is not vision_filler]
    return Collated(
        inputs=inputs,
        labels=labels,
        sample_ids=[ex.sample_id for ex in real],
        real_tokens=sum(ex.length for ex in real),
        padded_tokens=batch * width,
        target_tokens=int((labels[:, 1:] != IGNORE_INDEX).sum()),
    )


def shifted_targets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask over positions whose next token is a target, those targets).

    The mask selects hidden states for the LM head (``logits_to_keep``), so logits are only
    computed where the loss needs them: with a 150k vocabulary and 16k-token rows, full logits
    would take more memory than the model.
    """
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return keep, labels[:, 1:][keep[:, :-1]]
