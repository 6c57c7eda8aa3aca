"""Rows to micro-batches: labels, images, over-long samples, packing, exact stream resume."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sft.sft_helpers import curated_rows
from transformers import AutoModelForImageTextToText

from medsft_pipelines.models import load_processor
from medsft_pipelines.sft.data import (
    IGNORE_INDEX,
    BatchPlan,
    ExampleEncoder,
    MicroBatchStream,
    collate,
    first_fit_decreasing,
    group_micro_batches,
    shifted_targets,
)


def _png(size: int, color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def processor(tiny_model_dir: Path):
    return load_processor(tiny_model_dir)


@pytest.fixture(scope="module")
def rows(shared_data: Path) -> list[dict]:
    return curated_rows(shared_data)


def _label_text(processor, labels: torch.Tensor) -> str:
    ids = labels[labels != IGNORE_INDEX].tolist()
    return processor.tokenizer.decode(ids, skip_special_tokens=False)


def test_only_assistant_turns_are_learned(processor) -> None:
    row = {
        "id": "multi-turn",
        "images": [],
        "messages": [
            {"role": "system", "content": "You are a careful assistant."},
            {"role": "user", "content": "What is the normal heart rate?"},
            {"role": "assistant", "content": "<think>Adults: 60 to 100.</think>Answer: 60-100"},
            {"role": "user", "content": "And the assistant said what?"},
            {"role": "assistant", "content": "<think>Repeat.</think>Answer: 60-100"},
        ],
    }
    example = ExampleEncoder(processor, 4096).encode(row)
    assert example is not None
    learned = _label_text(processor, example.labels)
    assert learned == (
        "<think>Adults: 60 to 100.</think>Answer: 60-100<|im_end|>"
        "<think>Repeat.</think>Answer: 60-100<|im_end|>"
    )
    # The word "assistant" inside a user turn is not mistaken for a turn header.
    assert "And the assistant" not in learned


def test_images_are_placed_in_the_user_turn_and_counted(processor) -> None:
    row = {
        "id": "img",
        "images": [_png(56, (255, 0, 0)), _png(84, (0, 0, 255))],
        "messages": [
            {"role": "user", "content": "Compare the two images."},
            {"role": "assistant", "content": "<think>Both are plain.</think>Answer: same"},
        ],
    }
    example = ExampleEncoder(processor, 4096).encode(row)
    assert example is not None
    image_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    # 56px -> 2x2 merged tokens, 84px -> 3x3.
    assert int((example.input_ids == image_id).sum()) == 4 + 9
    assert int(example.mm_token_type_ids.sum()) == 13
    assert example.image_grid_thw.tolist() == [[1, 4, 4], [1, 6, 6]]
    # Pixels are loaded at collation: 16 + 36 patches of 3x2x14x14 values.
    assert ExampleEncoder(processor, 4096).pixels(example).shape == (16 + 36, 1176)
    assert not (example.labels[example.mm_token_type_ids == 1] != IGNORE_INDEX).any()

    explicit = dict(row, images=[_png(56, (1, 2, 3))], messages=[
        {"role": "user", "content": [{"type": "text", "text": "Look:"}, {"type": "image"}]},
        {"role": "assistant", "content": "Answer: dark"},
    ])  # fmt: skip
    placed = ExampleEncoder(processor, 4096).encode(explicit)
    text = processor.tokenizer.decode(placed.input_ids)
    assert text.index("Look:") < text.index("<|vision_start|>")

    with pytest.raises(ValueError, match="2 images but its messages place 1"):
        ExampleEncoder(processor, 4096).encode(dict(explicit, images=[_png(56, (0, 0, 0))] * 2))


def test_overlong_samples_are_dropped_or_truncated_and_counted(processor, rows) -> None:
    lengths = {r["id"]: ExampleEncoder(processor, 10**6).encode(r).length for r in rows}
    limit = sorted(lengths.values())[-4]  # three samples are longer than this
    longer = [i for i, n in lengths.items() if n > limit]
    assert len(longer) >= 3

    drop = ExampleEncoder(processor, limit, "drop")
    kept = [ex for ex in map(drop.encode, rows) if ex is not None]
    assert drop.stats.overlong_dropped == len(longer)
    assert {ex.sample_id for ex in kept} == set(lengths) - set(longer)

    cut = ExampleEncoder(processor, limit, "truncate")
    truncated = [ex for ex in map(cut.encode, rows) if ex is not None]
    assert cut.stats.overlong_truncated == len(longer)
    assert len(truncated) == len(rows)
    assert max(ex.length for ex in truncated) == limit

    # Truncation never cuts through an image: such a sample is dropped (and counted) instead.
    image_row = next(r for r in rows if r["images"])
    full = ExampleEncoder(processor, 10**6).encode(image_row)
    first_image = int(torch.nonzero(full.mm_token_type_ids)[0])
    tight = ExampleEncoder(processor, first_image + 1, "truncate")
    assert tight.encode(image_row) is None
    assert tight.stats.overlong_dropped == 1


def test_first_fit_decreasing_packs_everything_once_within_capacity() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(50, 3000) for _ in range(500)]
    bins = first_fit_decreasing(lengths, 4096)
    flat = sorted(i for b in bins for i in b)
    assert flat == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 4096 for b in bins)
    fill = sum(lengths) / (len(bins) * 4096)
    assert fill > 0.95, fill
    with pytest.raises(ValueError, match="exceeds the capacity"):
        first_fit_decreasing([10, 5000], 4096)


def test_length_grouping_batches_similar_rows_deterministically() -> None:
    rng = random.Random(1)
    lengths = [rng.randint(1, 1000) for _ in range(64)]
    batches = group_micro_batches(lengths, 8, True, random.Random("s"))
    assert batches == group_micro_batches(lengths, 8, True, random.Random("s"))
    spans = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches]
    ungrouped = group_micro_batches(lengths, 8, False, random.Random("s"))
    spans_ungrouped = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in ungrouped]
    assert sum(spans) < sum(spans_ungrouped) / 3


def _loss_sum(model, collated) -> torch.Tensor:
    keep, targets = shifted_targets(collated.labels)
    out = model(**collated.inputs, logits_to_keep=keep, use_cache=False)
    return F.cross_entropy(out.logits.float(), targets, reduction="sum")


def test_packing_gives_the_same_loss_with_less_padding(any_tiny_model: Path, rows) -> None:
    """Packed rows (block-diagonal attention from position resets) == one sample at a time."""
    model = AutoModelForImageTextToText.from_pretrained(any_tiny_model).eval()
    processor = load_processor(any_tiny_model)
    encoder = ExampleEncoder(processor, 1024)
    # Text and image samples mixed, of different lengths.
    examples = [encoder.encode(r) for r in rows[:3] + rows[-3:]]
    pad = processor.tokenizer.pad_token_id
    rope = model.model.get_rope_index
    bins = first_fit_decreasing([ex.length for ex in examples], 512)
    packed = collate(
        [[examples[i] for i in b] for b in bins], pad, rope, True, pixels=encoder.pixels
    )
    padded = collate([[ex] for ex in examples], pad, None, False, pixels=encoder.pixels)
    with torch.no_grad():
        one_by_one = sum(
            _loss_sum(model, collate([[ex]], pad, None, False, pixels=encoder.pixels))
            for ex in examples
        )
        packed_loss = _loss_sum(model, packed)
        padded_loss = _loss_sum(model, padded)
        # The same packed rows with plain positions (no resets) let samples see each other.
        leaky = dict(packed.inputs, position_ids=None)
        keep, targets = shifted_targets(packed.labels)
        leaky_loss = F.cross_entropy(
            model(**leaky, logits_to_keep=keep, use_cache=False).logits, targets, reduction="sum"
        )
        # A micro-batch without images carries the loss-free vision filler (see collate).
        texts = [ex for ex in examples if ex.image_grid_thw is None]
        filled = collate([texts], pad, rope, packed=True, vision_filler=encoder.vision_filler())
        filled_padded = collate([[ex] for ex in texts], pad, None, False, encoder.vision_filler())
        texts_one_by_one = sum(
            _loss_sum(model, collate([[ex]], pad, None, packed=False)) for ex in texts
        )
        filled_loss, filled_padded_loss = _loss_sum(model, filled), _loss_sum(model, filled_padded)
    assert "pixel_values" in filled.inputs and "pixel_values" in filled_padded.inputs
    assert filled.sample_ids == [ex.sample_id for ex in texts]
    torch.testing.assert_close(filled_loss, texts_one_by_one, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(filled_padded_loss, texts_one_by_one, rtol=1e-5, atol=1e-4)
    assert packed.target_tokens == padded.target_tokens == sum(ex.num_targets for ex in examples)
    torch.testing.assert_close(packed_loss, one_by_one, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(padded_loss, one_by_one, rtol=1e-5, atol=1e-4)
    assert abs(leaky_loss.item() - one_by_one.item()) > 1e-2  # the check above can fail
    assert packed.padded_tokens < padded.padded_tokens
    assert packed.real_tokens == padded.real_tokens


def test_stream_follows_the_plan_and_resumes_at_any_batch_exactly(processor, rows) -> None:
    def source(epoch: int, start: int):
        order = list(range(len(rows)))
        random.Random(epoch).shuffle(order)
        return (rows[i] for i in order[start:])

    measure = ExampleEncoder(processor, 190)
    lengths = [measure.token_length(r) for r in rows]

    def rank_lengths(epoch: int) -> list[int]:
        order = list(range(len(rows)))
        random.Random(epoch).shuffle(order)
        return [lengths[i] for i in order]

    plan = BatchPlan(micro_batch_size=2, max_seq_length=190, chunk_samples=7)
    stream = MicroBatchStream(source, ExampleEncoder(processor, 190), plan, 3, rank_lengths)
    full = list(stream.iter_epoch(1))
    assert len(full) == stream.epoch_plan(1).micro_batches
    ids = [b.sample_ids for b in full]
    kept = sorted(r["id"] for r, n in zip(rows, lengths, strict=True) if n <= 190)
    assert any(n > 190 for n in lengths)  # over-long samples are left out, as planned
    assert sorted(i for b in ids for i in b) == kept  # each once
    assert stream.encoder.stats.overlong_dropped == len(rows) - len(kept)
    for k in range(1, len(full)):
        encoder = ExampleEncoder(processor, 190)
        encoder.stats = full[k - 1].resume_stats.copy()
        resumed = MicroBatchStream(source, encoder, plan, 3, rank_lengths)
        rest = list(resumed.iter_epoch(1, k))
        assert [b.sample_ids for b in rest] == ids[k:], k
        # The encoder counters continue as if never interrupted.
        assert encoder.stats == stream.encoder.stats
    other_epoch = [b.sample_ids for b in stream.iter_epoch(2)]
    assert other_epoch != ids


def test_lengths_other_than_the_trainers_are_refused(processor, rows) -> None:
    """A length table measured with another processor would silently break the plan."""
    off = [ExampleEncoder(processor, 10**6).token_length(r) + 1 for r in rows]
    plan = BatchPlan(micro_batch_size=2, max_seq_length=10**6)
    stream = MicroBatchStream(
        lambda e, s: rows[s:], ExampleEncoder(processor, 10**6), plan, 0, lambda e: off
    )
    with pytest.raises(ValueError, match="another processor"):
        list(stream.iter_epoch(0))


@pytest.mark.parametrize("micro_batch_size", [1, 2])
@pytest.mark.parametrize("flatten", [False, True])
def test_changing_one_packed_sample_changes_no_other_samples_logits(
    tiny_model_dir: Path, rows, micro_batch_size: int, flatten: bool
) -> None:
    """Rows of a micro-batch (SDPA's block-diagonal mask), or the micro-batch flattened into
    one row (the varlen layout): samples stay isolated. The same probe under the varlen
    function: tests/sft/test_attention.py; on its CUDA kernel in bf16: the GPU suite's
    benchmarks/sft_packing_isolation.py."""
    from medsft_pipelines.sft.isolation import isolation_probe

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir).eval()
    processor = load_processor(tiny_model_dir)
    encoder = ExampleEncoder(processor, 4096)
    examples = [encoder.encode(r) for r in rows[:5] + rows[-2:]]
    replacement = encoder.encode(rows[6])
    args = (model, examples, replacement, micro_batch_size, processor.tokenizer.pad_token_id)
    rope = model.model.get_rope_index
    others, own = isolation_probe(*args, rope, flatten=flatten, pixels=encoder.pixels)
    assert own > 1e-2  # the probe sees a change where there is one ...
    assert others < 1e-5, others  # ... and none anywhere else
