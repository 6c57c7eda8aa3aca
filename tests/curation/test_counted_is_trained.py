"""The length curation records for a sample (``n_tokens``, which SFT's step plan is made from)
equals the length SFT trains on: both render the chat with ``medsft_pipelines.chat``'s image
placement and the tiny Qwen2.5-VL's own processor (no mock)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from medsft_pipelines.chat import template_messages
from medsft_pipelines.curation.format import render_messages
from medsft_pipelines.curation.sample import Sample
from medsft_pipelines.specs.curation import FormatSpec


def _png(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (120, 30, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "sizes", [[], [(512, 512)], [(300, 200), (57, 91)]], ids=["text", "one-image", "two-images"]
)
def test_counted_length_is_the_trained_length(
    sizes: list[tuple[int, int]], token_counter, tiny_model_dir: Path
) -> None:
    from medsft_pipelines.models import load_processor
    from medsft_pipelines.sft.data import ExampleEncoder

    sample = Sample(
        id="s/1",
        source="s",
        task_type="mcq",
        modality="image" if sizes else "text",
        question="Which drug?",
        answer="B",
        options=["aspirin", "heparin", "warfarin"],
    )
    messages = render_messages(sample, "it thins the blood", FormatSpec())
    question = token_counter.question(messages, sizes)
    ((counted, _),) = token_counter.count([question], [messages[-1]["content"]])

    row = {"id": "s/1", "images": [_png(s) for s in sizes], "messages": messages}
    encoder = ExampleEncoder(load_processor(tiny_model_dir), max_seq_length=1 << 20)
    example = encoder.encode(row)
    assert example is not None
    assert example.length == counted
    assert int((example.mm_token_type_ids != 0).sum()) == sum(
        token_counter.image_tokens(sizes)
    )  # the images' tokens are in it, as many as counted


def test_images_go_where_the_parts_put_them_else_before_the_first_user_text() -> None:
    by_default = template_messages(
        [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "a1"},
            {"role": "user", "content": "q2"},
        ],
        2,
    )
    assert [p["type"] for p in by_default[1]["content"]] == ["image", "image", "text"]
    assert [p["type"] for p in by_default[3]["content"]] == ["text"]  # never placed twice
    explicit = [{"role": "user", "content": [{"type": "text", "text": "q"}, {"type": "image"}]}]
    assert template_messages(explicit, 1)[0]["content"][1] == {"type": "image"}
    with pytest.raises(ValueError, match="2 images but its messages place 1"):
        template_messages(explicit, 2)
