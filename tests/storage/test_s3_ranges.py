"""How the s3 backend cuts a large read into parallel ranges."""

from __future__ import annotations

import pytest

from medsft_pipelines.storage.s3 import _split

MiB = 1024 * 1024


@pytest.mark.parametrize(
    ("start", "end", "streams", "min_size"),
    [
        (0, 0, 4, MiB),
        (10, 11, 4, MiB),
        (64 * MiB, 256 * MiB, 4, 16 * MiB),
        (5, 12 * MiB + 3, 3, MiB),
    ],
)
def test_ranges_cover_the_rest_exactly_once(
    start: int, end: int, streams: int, min_size: int
) -> None:
    ranges = _split(start, end, streams, min_size)
    covered = start
    for offset, length in ranges:
        assert offset == covered
        assert length > 0
        covered += length
    assert covered == max(start, end)
    assert len(ranges) <= streams
    assert all(length >= min_size for _, length in ranges[:-1])


def test_large_rest_is_split_into_one_range_per_stream() -> None:
    assert _split(64 * MiB, 256 * MiB, 4, 16 * MiB) == [
        (64 * MiB, 48 * MiB),
        (112 * MiB, 48 * MiB),
        (160 * MiB, 48 * MiB),
        (208 * MiB, 48 * MiB),
    ]
