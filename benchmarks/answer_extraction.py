"""Answer extraction on real model output: medsft's extractor vs each source's own.

Two subcommands:

``build``    cut the vendored regression corpus out of public evaluation result files (git
             snapshots of the publishing repositories, read with ``git show``):
             * MMLU-Pro (TIGER-AI-Lab/MMLU-Pro, Apache-2.0): ``eval_results/model_outputs_*``
               zips, the ``health`` category, a seeded sample of responses per model;
             * Liévin et al., "Can large language models reason about medical questions?"
               (vlievin/medical-reasoning, Apache-2.0): the published chain-of-thought samples
               of Codex on MedMCQA, USMLE (MedQA) and PubMedQA, each marked correct/incorrect
               by the paper's own answer extraction.
``measure``  score every corpus: accuracy vs gold of the source's extractor and of
             ``medsft_pipelines.answers.extract_choice``, their agreement, None rates, and
             where they differ (see benchmarks/README.md for the numbers).

    .venv/bin/python benchmarks/answer_extraction.py build \\
        --mmlu-pro /path/to/TIGER-AI-Lab+MMLU-Pro/repo --lievin /path/to/vlievin+medical-reasoning/repo
    .venv/bin/python benchmarks/answer_extraction.py measure            # the vendored sample
    .venv/bin/python benchmarks/answer_extraction.py measure --full \\
        --mmlu-pro ... --lievin ...                                       # every response
"""

from __future__ import annotations

import argparse
import ast
import html
import importlib.util
import io
import json
import random
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

from medsft_pipelines.answers import extract_choice, option_map, split_think_answer

DATA = Path(__file__).parent / "data" / "answer_extraction"

MMLU_PRO_COMMIT_FILES = "eval_results"
# Chosen before measuring, by kind of model: two frontier APIs, a large API model, two large
# open chat models, a small open chat model.
MMLU_PRO_MODELS = (
    "gemini-1.5-pro-002",
    "gemini-1.5-flash-002",
    "jamba-1.5-large",
    "Meta-Llama-3_1-70B-Instruct",
    "Qwen1.5-72B-Chat",
    "Mistral-7B-Instruct-v0.2",
)
MMLU_PRO_PER_MODEL = 200
LIEVIN_FILES = {
    "medmcqa": "docs/samples/medmcqa-wo-context.html",
    "medqa": "docs/samples/usmle-valid.html",
    "pubmedqa": "docs/samples/pubmedqa.html",  # posed as A) yes B) no C) maybe
}
LIEVIN_PER_DATASET = 400
# MMLU-Pro's harness (evaluate_from_local.py) stops generation at this string; some published
# outputs were generated without it and run on into invented questions.
MMLU_PRO_STOP = "Question:"


# ------------------------------------------------------------------------------ the sources' extractors


def mmlu_pro_extract(text: str) -> str | None:
    """MMLU-Pro's published extraction chain (compute_accuracy.py, level 2), re-written.

    "answer is (X)" (first match), else the last "Answer: X", else the last standalone
    capital letter A-J anywhere in the text.
    """
    match = re.search(r"answer is \(?([A-J])\)?", text)
    if match:
        return match.group(1)
    match = re.search(r".*[aA]nswer:\s*([A-J])", text)
    if match:
        return match.group(1)
    match = re.search(r"\b[A-J]\b(?!.*\b[A-J]\b)", text, re.DOTALL)
    return match.group(0) if match else None


# ------------------------------------------------------------------------------ build


def _git_show(repo: Path, path: str) -> bytes:
    return subprocess.run(
        ["git", "-C", str(repo), "show", f"HEAD:{path}"], check=True, capture_output=True
    ).stdout


def _git_head(repo: Path) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()


def mmlu_pro_records(repo: Path, model: str, category: str = "health") -> list[dict]:
    raw = _git_show(repo, f"{MMLU_PRO_COMMIT_FILES}/model_outputs_{model}_5shots.zip")
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        entries = json.loads(archive.read(archive.namelist()[0]))
    records = []
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("category") != category:
            continue
        response = entry.get("model_outputs", entry.get("generated_text")) or ""
        response = response.split(MMLU_PRO_STOP)[0]
        options = entry["options"]
        if isinstance(options, str):
            options = ast.literal_eval(options)
        records.append(
            {
                "corpus": f"mmlu-pro-health/{model}",
                "id": str(entry["question_id"]),
                "options": list(options),
                "gold": entry["answer"],
                "response": response,
                "published_pred": entry.get("pred"),
                "source_pred": mmlu_pro_extract(response),
            }
        )
    return records


_LIEVIN_ROW = re.compile(r"<tr data-qid=\w+>(.*?)</tr>", re.S)
_LIEVIN_OPTION = re.compile(r"^(<strong>)?([A-E])\) (.*?)(</strong>)?$")


def lievin_records(repo: Path, dataset: str) -> list[dict]:
    page = _git_show(repo, LIEVIN_FILES[dataset]).decode()
    rows = _LIEVIN_ROW.findall(page)
    records = []
    for question_row, response_row in zip(rows[::2], rows[1::2], strict=True):
        cell = re.search(r'<td colspan="\d+">(.*?)</td>', question_row, re.S)
        assert cell is not None
        item_id = re.search(r"\[(\w+:[\w-]+)\]", cell.group(1))
        options, gold = [], None
        for line in cell.group(1).splitlines():
            option = _LIEVIN_OPTION.match(line.strip())
            if option:
                options.append(html.unescape(option.group(3)))
                gold = option.group(2) if option.group(1) else gold
        if gold is None:
            continue  # a few items render no gold
        for column, response in enumerate(re.findall(r"<td>(.*?)</td>", response_row, re.S)):
            text = html.unescape(response)
            records.append(
                {
                    "corpus": f"lievin-{dataset}/code-davinci-002",
                    "id": f"{item_id.group(1) if item_id else '?'}#{column}",
                    "options": options,
                    "gold": gold,
                    "response": text[1:].strip(),
                    "source_correct": text[0] == "\u2705",
                }
            )
    return records


def build(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    provenance = []
    for model in MMLU_PRO_MODELS:
        records = mmlu_pro_records(Path(args.mmlu_pro), model)
        sample = rng.sample(records, min(MMLU_PRO_PER_MODEL, len(records)))
        _write(out / f"mmlu-pro-health_{model}.jsonl", sample)
        provenance.append((f"mmlu-pro-health_{model}.jsonl", len(sample), len(records)))
    for dataset in LIEVIN_FILES:
        records = lievin_records(Path(args.lievin), dataset)
        sample = rng.sample(records, min(LIEVIN_PER_DATASET, len(records)))
        _write(out / f"lievin-{dataset}.jsonl", sample)
        provenance.append((f"lievin-{dataset}.jsonl", len(sample), len(records)))
    print(f"MMLU-Pro commit {_git_head(Path(args.mmlu_pro))}")
    print(f"medical-reasoning commit {_git_head(Path(args.lievin))}")
    for name, kept, total in provenance:
        print(f"{name}: {kept} of {total}")


def _write(path: Path, records: list[dict]) -> None:
    with path.open("w") as fh:
        for record in sorted(records, key=lambda r: r["id"]):
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")


# ------------------------------------------------------------------------------ measure


def load_corpora(folder: Path = DATA) -> dict[str, list[dict]]:
    """Every vendored corpus by name."""
    return {
        path.stem: [json.loads(line) for line in path.open()]
        for path in sorted(folder.glob("*.jsonl"))
    }


def ours(record: dict, extractor: Callable[..., str | None] = extract_choice) -> str | None:
    return extractor(split_think_answer(record["response"]).answer, option_map(record["options"]))


def load_extractor(path: str) -> Callable[..., str | None]:
    """``extract_choice`` of another answers.py (e.g. the one before a change, from git show)."""
    spec = importlib.util.spec_from_file_location("answers_compared", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module.extract_choice


def source_correct(record: dict) -> bool:
    if "source_correct" in record:
        return bool(record["source_correct"])
    return record["source_pred"] == record["gold"]


def score(records: list[dict]) -> dict:
    """Accuracy, agreement and None rates of medsft's extractor and the source's."""
    n = len(records)
    preds = [ours(r) for r in records]
    mine = [p == r["gold"] for p, r in zip(preds, records, strict=True)]
    theirs = [source_correct(r) for r in records]
    if "source_pred" in records[0]:
        agree = sum(p == r["source_pred"] for p, r in zip(preds, records, strict=True))
        source_none = sum(r["source_pred"] is None for r in records) / n
    else:  # only the source's verdict is published: agreement on correct/incorrect
        agree = sum(a == b for a, b in zip(mine, theirs, strict=True))
        source_none = float("nan")
    losses = [
        (p, r) for p, r, a, b in zip(preds, records, mine, theirs, strict=True) if b and not a
    ]
    return {
        "n": n,
        "source_acc": sum(theirs) / n,
        "ours_acc": sum(mine) / n,
        "agreement": agree / n,
        "source_none": source_none,
        "ours_none": sum(p is None for p in preds) / n,
        "wins": sum(a and not b for a, b in zip(mine, theirs, strict=True)),
        "losses_abstained": sum(p is None for p, _ in losses),
        "losses_other_option": sum(p is not None for p, _ in losses),
    }


def measure(args: argparse.Namespace) -> None:
    if args.full:
        corpora: dict[str, list[dict]] = {}
        for model in args.models or MMLU_PRO_MODELS:
            corpora[f"mmlu-pro-health_{model}"] = mmlu_pro_records(Path(args.mmlu_pro), model)
        for dataset in LIEVIN_FILES:
            corpora[f"lievin-{dataset}"] = lievin_records(Path(args.lievin), dataset)
    else:
        corpora = load_corpora(Path(args.data))
    other = load_extractor(args.compare) if args.compare else None
    print(
        "| corpus | n | source acc | medsft acc | Δ | agreement | None source / medsft "
        "| medsft right, source wrong | source right, medsft None | source right, medsft other option |"
        + (" compared extractor: acc / None |" if other else "")
    )
    print("|---|---|---|---|---|---|---|---|---|---|" + ("---|" if other else ""))
    for name, records in corpora.items():
        s = score(records)
        source_none = "n/a" if s["source_none"] != s["source_none"] else f"{s['source_none']:.1%}"
        row = (
            f"| {name} | {s['n']} | {s['source_acc']:.1%} | {s['ours_acc']:.1%} "
            f"| {100 * (s['ours_acc'] - s['source_acc']):+.1f} pt | {s['agreement']:.1%} "
            f"| {source_none} / {s['ours_none']:.1%} | {s['wins']} | {s['losses_abstained']} "
            f"| {s['losses_other_option']} |"
        )
        if other:
            preds = [ours(r, other) for r in records]
            acc = sum(p == r["gold"] for p, r in zip(preds, records, strict=True)) / len(records)
            none = sum(p is None for p in preds) / len(records)
            row += f" {acc:.1%} / {none:.1%} |"
        print(row)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build")
    b.add_argument("--mmlu-pro", required=True, help="git dir of TIGER-AI-Lab/MMLU-Pro")
    b.add_argument("--lievin", required=True, help="git dir of vlievin/medical-reasoning")
    b.add_argument("--out", default=str(DATA))
    m = sub.add_parser("measure")
    m.add_argument("--data", default=str(DATA))
    m.add_argument("--full", action="store_true", help="every response of the upstream files")
    m.add_argument("--mmlu-pro")
    m.add_argument("--lievin")
    m.add_argument("--models", nargs="*", help="MMLU-Pro models for --full (default: vendored)")
    m.add_argument("--compare", help="another answers.py whose extract_choice to score too")
    args = parser.parse_args(argv)
    {"build": build, "measure": measure}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
