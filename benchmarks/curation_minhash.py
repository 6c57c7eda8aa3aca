"""MinHash near-duplicate detection: datasketch vs rensa on the same questions.

    .venv/bin/python benchmarks/curation_minhash.py [--docs 20000] [--repeat 3]

Documents: the real PubMedQA questions+abstracts and VQA-RAD questions (complete upstream files: public_data.py),
replicated with random word edits (a realistic near-duplicate rate) up to ``--docs``. Both
backends run through the same code path the merge uses (``dedup.near_duplicates``: sketch
every document, then keep-first LSH queries verified by estimated Jaccard), with the spec's
defaults (128 permutations, 5-word shingles, threshold 0.8). Reported: CPU seconds (process
time, so every thread counts), documents/s, and how often the two backends agree.
"""

from __future__ import annotations

import argparse
import json
import random
import time

from public_data import public_data

from medsft_pipelines.curation.dedup import MinHasher, near_duplicates
from medsft_pipelines.curation.text import shingles, words

DATA = public_data()


def documents(n: int, seed: int = 0) -> list[str]:
    pubmed = json.loads((DATA / "pubmedqa/ori_pqal.json").read_text())
    vqa = json.loads((DATA / "vqa-rad/VQA_RAD_Dataset_Public.json").read_text())
    base = ["\n".join([*r["CONTEXTS"], r["QUESTION"]]) for r in pubmed.values()]
    base += [r["question"] for r in vqa]
    rng = random.Random(seed)
    docs = list(base)
    while len(docs) < n:
        tokens = rng.choice(base).split()
        for _ in range(rng.choice([0, 1, 2, 8])):  # some exact, some near, some far copies
            if len(tokens) > 3:
                tokens[rng.randrange(len(tokens))] = rng.choice(["alpha", "beta", "gamma", "delta"])
        docs.append(" ".join(tokens))
    rng.shuffle(docs)
    return docs[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    docs = documents(args.docs)
    tokens = [shingles(words(d), 5) for d in docs]
    keys = [str(i) for i in range(len(docs))]
    results = {}
    for backend in ("rensa", "datasketch"):
        sketch_s, total_s = [], []
        dropped: dict[str, str] = {}
        for _ in range(args.repeat):
            t0 = time.process_time()
            MinHasher(128, backend).sketch_many(tokens)  # type: ignore[arg-type]
            sketch_s.append(time.process_time() - t0)
            t0 = time.process_time()
            dropped = near_duplicates(keys, tokens, 0.8, 128, backend)  # type: ignore[arg-type]
            total_s.append(time.process_time() - t0)
        results[backend] = {
            "sketch_cpu_s": min(sketch_s),
            "dedup_cpu_s": min(total_s),
            "docs_per_cpu_s": round(len(docs) / min(total_s)),
            "dropped": len(dropped),
            "_dropped": set(dropped),
        }
    a, b = results["rensa"].pop("_dropped"), results["datasketch"].pop("_dropped")
    summary = {
        "docs": len(docs),
        "results": results,
        "speedup_rensa_over_datasketch": round(
            results["datasketch"]["dedup_cpu_s"] / results["rensa"]["dedup_cpu_s"], 1
        ),
        "decision_agreement": round(1 - len(a ^ b) / len(docs), 4),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
