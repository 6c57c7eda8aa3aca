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
2. The step plan is made before any sample is read, from every sample's token length
   (:mod:`.lengths`): a rank's stream (:meth:`DatasetReader.sample_order`) is cut into
   windows of ``chunk_samples``; in each, over-long samples are left out (or cut),
   :func:`first_fit_decreasing` packs the rest into rows of at most ``max_seq_length`` tokens
   (without packing, each row holds one example), and :func:`group_micro_batches` forms
   micro-batches (rows of similar length together when length grouping is on) in a shuffled,
   seeded order (:func:`plan_epoch`). The plan fixes the number of optimiser steps of every
   epoch exactly, so the learning-rate schedule is built on the real step count.
3. :class:`MicroBatchStream` reads and encodes a window's samples and hands out its
   micro-batches exactly as planned, checking each sample's length against the plan. A
   position (epoch, step) regenerates the same batches after a restart.
4. Micro-batches of one window hold only that window's samples.
5. :func:`collate` builds model inputs. Packed rows get no attention mask and
   ``position_ids`` of shape ``[4, B, L]``: row 0 restarts at 0 for every sample (transformers
   derives the block-diagonal mask from it; the GPU's varlen kernel, :mod:`.attention`, cuts
   the sequences there), rows
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

from medsft_pipelines.chat import template_messages

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
        batch = self._process(row)
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

    def _process(self, row: Mapping[str, Any]) -> Any:
        images = decode_images(row.get("images") or [])
        messages = template_messages(row["messages"], len(images))
        text = self.processor.apply_chat_template(messages, tokenize=False)
        return self.processor(text=[text], images=images or None, return_tensors="pt")

    def token_length(self, row: Mapping[str, Any]) -> int:
        """The row's length in tokens before any truncation (not counted in ``stats``)."""
        return int(self._process(row)["input_ids"].shape[1])

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
    The first bin with room is found in a max-tree of the bins' free space (O(log bins) per
    item), so the exact step plan of a whole epoch costs seconds, not minutes.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    size = 1
    while size < max(1, len(lengths)):
        size *= 2
    tree = [-1] * (2 * size)  # free space of bin b at leaf size + b; -1: no such bin yet
    bins: list[list[int]] = []
    for i in order:
        need = lengths[i]
        if need > capacity:
            raise ValueError(f"item of {need} tokens exceeds the capacity {capacity}")
        if tree[1] >= need:  # descend to the leftmost bin with room
            node = 1
            while node < size:
                node = 2 * node if tree[2 * node] >= need else 2 * node + 1
            b = node - size
            bins[b].append(i)
            free = tree[node] - need
        else:
            b = len(bins)
            bins.append([i])
            node = size + b
            free = capacity - need
        tree[node] = free
        node //= 2
        while node:
            tree[node] = max(tree[2 * node], tree[2 * node + 1])
            node //= 2
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
    """Where the job is in its data: enough to regenerate the next batch exactly."""

    epoch: int = 0
    step: int = 0
    """Optimiser steps of this epoch already taken."""


@dataclass
class MicroBatch:
    """Rows of examples (several per row when packed) of one micro-batch of the plan."""

    rows: list[list[Example]]
    index: int
    """Position of the micro-batch in the rank's epoch plan."""
    resume_stats: DataStats
    """Encoder counters as of the start of the window holding micro-batch ``index + 1``:
    what a checkpoint saves, since resuming re-encodes (and so re-counts) that window."""

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
    overlong: Literal["drop", "truncate"] = "drop"
    chunk_samples: int = 2048
    """Samples per packing/grouping window: larger packs tighter (see
    benchmarks/sft_packing.py: 512 -> 97-98 %, 2048 -> 98.7-99.5 % full rows) and holds more
    token ids in memory (pixels are loaded per micro-batch)."""

    def planned_length(self, length: int) -> int | None:
        """Tokens a sample of ``length`` takes in a row; None when it is dropped as over-long."""
        if length <= self.max_seq_length:
            return length
        return self.max_seq_length if self.overlong == "truncate" else None


PlannedBatch = list[list[int]]
"""One micro-batch of the plan: rows of sample indices (positions in the rank's stream)."""


@dataclass
class Window:
    """``chunk_samples`` consecutive samples of a rank's stream and the micro-batches they form."""

    start: int
    stop: int
    batches: list[PlannedBatch]


@dataclass
class EpochPlan:
    """One rank's micro-batches of one epoch, decided from token lengths alone."""

    windows: list[Window]
    lengths: list[int]
    """Every sample's token length, in stream order (before truncation)."""

    @property
    def micro_batches(self) -> int:
        return sum(len(w.batches) for w in self.windows)

    @property
    def samples(self) -> int:
        return sum(len(row) for w in self.windows for mb in w.batches for row in mb)


def plan_window(
    lengths: Sequence[int], start: int, plan: BatchPlan, rng: random.Random
) -> list[PlannedBatch]:
    """The micro-batches of the window whose samples (from stream index ``start``) have
    ``lengths``: over-long ones left out (drop) or cut (truncate), the rest packed into rows
    (or one per row), rows grouped into micro-batches, the batch order shuffled."""
    planned = [(start + i, plan.planned_length(n)) for i, n in enumerate(lengths)]
    kept = [(index, n) for index, n in planned if n is not None]
    if plan.packing:
        bins = first_fit_decreasing([n for _, n in kept], plan.max_seq_length)
        rows = [[kept[i][0] for i in b] for b in bins]
        row_lengths = [sum(kept[i][1] for i in b) for b in bins]
    else:
        rows = [[index] for index, _ in kept]
        row_lengths = [n for _, n in kept]
    groups = group_micro_batches(row_lengths, plan.micro_batch_size, plan.length_grouping, rng)
    return [[rows[i] for i in g] for g in groups]


def plan_epoch(lengths: Sequence[int], plan: BatchPlan, seed: int, epoch: int) -> EpochPlan:
    """A rank's epoch plan: its stream (``lengths`` in stream order) cut into windows."""
    windows = []
    for start in range(0, len(lengths), plan.chunk_samples):
        stop = min(start + plan.chunk_samples, len(lengths))
        rng = random.Random(f"{seed}/{epoch}/{start}")
        windows.append(Window(start, stop, plan_window(lengths[start:stop], start, plan, rng)))
    return EpochPlan(windows, list(lengths))


SampleSource = Callable[[int, int], Iterable[Mapping[str, Any]]]
"""(epoch, start) -> this rank's rows of that epoch from stream index ``start``."""


class MicroBatchStream:
    """One rank's micro-batches of an epoch, exactly as its :class:`EpochPlan` says.

    The plan is made from token lengths before any sample is read; reading then encodes
    each window's samples and checks that every kept sample has the length the plan used
    (a different processor than the one that measured the lengths would break the plan).
    """

    def __init__(
        self,
        source: SampleSource,
        encoder: ExampleEncoder,
        plan: BatchPlan,
        seed: int,
        lengths: Callable[[int], Sequence[int]],
    ):
        self.source = source
        self.encoder = encoder
        self.plan = plan
        self.seed = seed
        self.lengths = lengths
        """epoch -> this rank's token lengths in stream order (see :mod:`.lengths`)."""
        self._plans: dict[int, EpochPlan] = {}

    def epoch_plan(self, epoch: int) -> EpochPlan:
        if epoch not in self._plans:
            self._plans = {epoch: plan_epoch(self.lengths(epoch), self.plan, self.seed, epoch)}
        return self._plans[epoch]

    def iter_epoch(self, epoch: int, first: int = 0) -> Iterator[MicroBatch]:
        """The epoch's micro-batches from plan index ``first`` on (the window holding it is
        re-read and re-encoded; its earlier batches are skipped)."""
        plan = self.epoch_plan(epoch)
        index = 0
        rows: Iterator[Mapping[str, Any]] | None = None
        for window in plan.windows:
            if index + len(window.batches) <= first:
                index += len(window.batches)
                continue
            if rows is None:
                rows = iter(self.source(epoch, window.start))
            raw = [row for _, row in zip(range(window.stop - window.start), rows, strict=False)]
            if len(raw) != window.stop - window.start:
                raise ValueError(
                    f"epoch {epoch}: the data ended at sample {window.start + len(raw)} of a "
                    f"planned {window.stop}"
                )
            stats_before = self.encoder.stats.copy()
            examples = {window.start + i: ex for i, ex in enumerate(map(self.encoder.encode, raw))}
            stats_after = self.encoder.stats.copy()
            self._check_lengths(plan, window, examples)
            for k, batch in enumerate(window.batches):
                if index >= first:
                    last = k + 1 == len(window.batches)
                    built = [[ex for i in row if (ex := examples[i]) is not None] for row in batch]
                    built = [row for row in built if row]
                    yield MicroBatch(built, index, stats_after if last else stats_before)
                index += 1

    def _check_lengths(
        self, plan: EpochPlan, window: Window, examples: Mapping[int, Example | None]
    ) -> None:
        planned = {i for mb in window.batches for row in mb for i in row}
        for i, ex in examples.items():
            if ex is None:
                continue  # dropped by the encoder (over-long, or nothing to learn): counted
            expected = self.plan.planned_length(plan.lengths[i])
            if i not in planned or ex.length != expected:
                raise ValueError(
                    f"sample {ex.sample_id}: {ex.length} tokens once encoded, the step plan "
                    f"used {plan.lengths[i]}: the dataset's token lengths were measured with "
                    "another processor or chat template than the trainer's"
                )


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
    rows: int = 0
    """Rows (sequences as the model sees them: packed rows when packing is on)."""
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
    flatten: bool = False,
) -> Collated:
    """Pad rows to the longest one and build the model inputs (see the module docstring).

    ``flatten`` (packed only; what the trainer does under a varlen kernel: its own
    :data:`~medsft_pipelines.sft.attention.VARLEN`, the GPU default, or flash-attn's) puts the
    whole micro-batch in one row, which needs no padding. The varlen kernels take the packed
    boundaries from the text position ids (row 0 of ``position_ids``); flash-attn's does so
    only for a batch of one row (rows of a larger micro-batch would attend across samples).
    The boundaries are not passed as ``cu_seq_lens_q/k`` kwargs: the Qwen-VL models hand a
    forward's kwargs to their vision tower too, whose attention sets its own (a duplicate
    keyword under flash-attention). SDPA and eager keep the rows and get a block-diagonal
    mask from the position resets.

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
    micro_batch_rows = len(rows)
    if flatten and not packed:
        raise ValueError("only packed micro-batches can be flattened")
    if flatten:
        rows = [[ex for row in rows for ex in row]]
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
        rows=micro_batch_rows,
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
