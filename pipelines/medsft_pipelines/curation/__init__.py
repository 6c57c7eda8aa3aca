"""Curation: the structured-reasoning data recipe as small composable steps.

A worker (``worker.py``) takes a deterministic slice of every source and runs the per-sample
steps; the merge (``merge.py``) applies the global ones and writes the final dataset. The
worker's per-question steps share one interface (``steps.py``: items in, items out, counts)
and are composed from the spec; the modules below hold what each step does:

==================  =============================================================  ==========
step                what it does                                                   where
==================  =============================================================  ==========
``sources``         jsonl / json / parquet / saved-HF rows -> canonical ``Sample``   worker
``images``          decode, normalise mode, resize to the pixel budget, hash         worker
``decontam``        16-gram / near-paraphrase / image-hash overlap with benchmarks   worker
``dedup``           exact question hash (worker and merge), MinHash LSH (merge)      both
``teacher``         OpenAI-compatible client, k samples, cached in storage           worker
``verify``          rejection sampling through :mod:`medsft_pipelines.answers`       worker
``format``          system / user / assistant (``<think>`` trace + answer) messages  worker
``lengths``         token counts with the target processor, image tokens included    worker
``balance``         class balance, per-source caps and weights, length mixture       merge
``report``          JSON + Markdown + PNG plots next to the dataset                  merge
``quarantine``      bad rows and unparseable teacher output, by reason; error budget  both
==================  =============================================================  ==========

Every sampling decision ranks items by a seeded hash of their id, never by position or by
a shared random stream, so the output does not depend on how the input was split between
workers: N workers + merge produce the same dataset as one.
"""
