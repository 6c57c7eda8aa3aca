"""Every sample's token length, known before training: what the exact step plan is made of.

Curated shards carry an ``n_tokens`` column: the length of the rendered conversation as the
trainer encodes it, measured by curation with the target model's processor (image tokens
included). Datasets without it (hand-made ones) are measured here with the trainer's own
encoder. Either way each rank measures about ``1/world_size`` of the shards and the ranks
exchange the results, so every rank holds the whole table (4 bytes a sample) and can plan
every epoch. The trainer checks each sample's encoded length against the table as it reads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from medsft_pipelines.sft.data import ExampleEncoder
from medsft_pipelines.storage.shards import DatasetReader

log = logging.getLogger("medsft.sft")

LENGTH_COLUMN = "n_tokens"

Gather = Callable[[Any], list[Any]]
"""All-gather of a picklable object over the job's ranks (a list with one item per rank)."""


class SampleLengths:
    """Token lengths of every sample of a dataset, by (shard, row)."""

    def __init__(self, per_shard: Sequence[np.ndarray]) -> None:
        self.offsets = np.concatenate([[0], np.cumsum([len(a) for a in per_shard])]).astype(
            np.int64
        )
        self.flat = (
            np.concatenate(per_shard).astype(np.int64) if per_shard else np.empty(0, np.int64)
        )

    def lookup(self, shards: np.ndarray, rows: np.ndarray) -> list[int]:
        """The lengths of the samples at ``(shards[i], rows[i])``."""
        return self.flat[self.offsets[shards] + rows].tolist()

    @classmethod
    def measure(
        cls,
        reader: DatasetReader,
        encoder: ExampleEncoder,
        rank: int = 0,
        world_size: int = 1,
        gather: Gather = lambda mine: [mine],
    ) -> SampleLengths:
        """Read (``n_tokens`` column) or measure (encoder) this rank's share of the shards,
        then exchange them with the other ranks."""
        shards = range(rank, len(reader.manifest.shards), world_size)
        mine: dict[int, np.ndarray] = {}
        if LENGTH_COLUMN in reader.manifest.columns:
            lengths_only = DatasetReader(
                reader.store, verify=reader.verify, columns=[LENGTH_COLUMN]
            )
            for shard in shards:
                column = lengths_only.read_shard(shard).column(LENGTH_COLUMN)
                mine[shard] = column.to_numpy(zero_copy_only=False).astype(np.int32)
        else:
            for shard in shards:
                rows = reader.read_shard(shard).to_pylist()
                mine[shard] = np.asarray([encoder.token_length(r) for r in rows], np.int32)
        merged: dict[int, np.ndarray] = {}
        for part in gather(mine):
            merged.update(part)
        return cls([merged[s] for s in range(len(reader.manifest.shards))])
