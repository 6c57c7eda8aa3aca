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
             * MIRAGE / MedRAG (Teddy-XiongGZ/MIRAGE, public domain), issue #26: GPT-3.5/GPT-4
               JSON replies (``answer_choice``) on MedQA, MedMCQA, PubMedQA, MMLU-medical;
             * MMMU (MMMU-Benchmark/MMMU, Apache-2.0), issue #26: the Health & Medicine outputs
               of MMMU-Pro's GPT-4o runs and MMMU's LLaVA-1.5 / Qwen-VL examples;
             these two carry a deterministic ``split`` (tune / report) and, being third-party
             data, are read from the shared data folder beside the checkout
             (``shared/data/answer_extraction``), not kept in the repo.
``measure``  score every corpus: accuracy vs gold of the source's extractor and of
             ``medsft_pipelines.answers.extract_choice``, their agreement, None rates, and
             where they differ (see benchmarks/README.md for the numbers).

    .venv/bin/python benchmarks/answer_extraction.py build \\
        --mmlu-pro /path/to/TIGER-AI-Lab+MMLU-Pro/repo --lievin /path/to/vlievin+medical-reasoning/repo
    .venv/bin/python benchmarks/answer_extraction.py build --mirage <git dir> --mmmu <git dir> --out DIR
    .venv/bin/python benchmarks/answer_extraction.py measure            # the vendored sample
    .venv/bin/python benchmarks/answer_extraction.py measure --full \\
        --mmlu-pro ... --lievin ...                                       # every response
"""

from __future__ import annotations

import argparse
import ast
import csv
import hashlib
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

from medsft_pipelines.answers import OPTION_LETTERS, extract_choice, option_map, split_think_answer
from medsft_pipelines.eval.benchmarks.mmlu_medical import SUBJECTS as MMLU_MEDICAL_SUBJECTS

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
# MIRAGE (Teddy-XiongGZ/MIRAGE): the four multiple-choice sets whose sources its rawdata/ holds
# (BioASQ's is not redistributable), and MMLU's six medical subjects (MIRAGE picks the same six
# as medsft's MMLU-medical benchmark).
MIRAGE_DATASETS = ("medqa", "medmcqa", "pubmedqa", "mmlu")
MIRAGE_MMLU_DOMAINS = MMLU_MEDICAL_SUBJECTS
MIRAGE_PER_GROUP = 20  # per dataset x model x setting: 16 groups, 320 responses
MMMU_HEALTH = frozenset(
    {
        "Basic_Medical_Science",
        "Clinical_Medicine",
        "Diagnostics_and_Laboratory_Medicine",
        "Pharmacy",
        "Public_Health",
    }
)
MMMU_PRO_FILES = {
    "gpt-4o_standard(10 options)_cot.jsonl": "standard-cot",
    "gpt-4o_standard(10 options)_direct.jsonl": "standard-direct",
    "gpt-4o_vision_cot.jsonl": "vision-cot",
    "gpt-4o_vision_direct.jsonl": "vision-direct",
}
MMMU_EXAMPLE_MODELS = ("llava1.5_13b", "qwen_vl")
MMMU_PER_GROUP = 55  # per setting or model: 6 groups, 330 responses (the MMMU ones have ~120)
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


def mirage_extract(answer_choice: str) -> str | None:
    """MIRAGE's ``locate_answer`` (src/utils.py), re-written: the first rule that matches the
    text after the last ``"answer_choice": "`` gives the letter. The source then falls back to
    "A"; here that is None (a guess, counted wrong for both)."""
    rules = (
        r"^\s*([A-D])$",
        r"^\s*([A-D]) or",
        r"^\s*([A-D]) and",
        r"^\s*([A-D])/",
        r"^\s*([A-D]),",
        r"[Oo]ption ([A-D])",
        r":\s*([A-D])",
        r"^\s*([A-D])\.",
        r'^\s*([A-D])"',
        r"^\s*([A-D]):",
    )
    for rule in rules:
        match = re.search(rule, answer_choice)
        if match:
            return match.group(1)
    return None


def _mirage_items(repo: Path) -> dict[tuple[str, str], tuple[list[str], str]]:
    """(dataset, MIRAGE item key) -> (options, gold), read from the source files MIRAGE's
    rawdata/build.py turns into benchmark.json (which is too large for the snapshot)."""
    items: dict[tuple[str, str], tuple[list[str], str]] = {}
    medqa = _git_show(
        repo, "rawdata/medqa/data_clean/questions/US/4_options/phrases_no_exclude_test.jsonl"
    )
    for i, line in enumerate(medqa.decode().splitlines()):
        item = json.loads(line)
        items["medqa", f"{i:04d}"] = ([item["options"][k] for k in "ABCD"], item["answer_idx"])
    for line in _git_show(repo, "rawdata/medmcqa/data/dev.json").decode().splitlines():
        item = json.loads(line)
        options = [item["opa"], item["opb"], item["opc"], item["opd"]]
        items["medmcqa", item["id"]] = (options, "ABCD"[item["cop"] - 1])
    pubmedqa = json.loads(_git_show(repo, "rawdata/pubmedqa/data/test_set.json"))
    for pmid, item in pubmedqa.items():
        gold = "ABC"[["yes", "no", "maybe"].index(item["final_decision"])]
        items["pubmedqa", pmid] = (["yes", "no", "maybe"], gold)
    for domain in MIRAGE_MMLU_DOMAINS:
        table = _git_show(repo, f"rawdata/mmlu/data/test/{domain}_test.csv").decode()
        for i, row in enumerate(csv.reader(io.StringIO(table))):
            items["mmlu", f"{domain}-{i:03d}"] = (row[1:5], row[5])
    return items


def mirage_records(repo: Path) -> list[dict]:
    """Every MedQA / MedMCQA / PubMedQA / MMLU-medical response MIRAGE publishes (two GPT
    models, chain-of-thought with and without retrieval): a JSON object with
    ``step_by_step_thinking`` and ``answer_choice``."""
    items = _mirage_items(repo)
    paths = [
        path
        for path in _git_ls(repo, "prediction")
        if path.split("/")[1] in MIRAGE_DATASETS and path.endswith(".json")
    ]
    records = []
    for path, blob in zip(paths, _git_blobs(repo, paths), strict=True):
        # prediction/<set>/<cot|rag_32>/OpenAI/<model>[/<corpus>/<retriever>]/<file>
        parts = path.split("/")
        dataset, setting, model, name = parts[1], parts[2], parts[4], parts[-1]
        key = name.removesuffix(".json").split("_", 1)[1]
        options, gold = items[dataset, key]
        answers = json.loads(blob)
        response = answers[0] if answers else ""
        records.append(
            {
                "corpus": f"mirage-{dataset}/{model}/{setting}",
                "id": f"{dataset}:{key}:{model}:{setting}",
                "split": split_of(f"{dataset}:{key}"),
                "options": options,
                "gold": gold,
                "response": response,
                # MIRAGE's evaluate.py: locate_answer on what follows the answer_choice key.
                "source_pred": mirage_extract(response.split('"answer_choice": "')[-1].strip())
                if answers
                else None,
            }
        )
    return records


def mmmu_guessed(response: str, letters: list[str], options: dict[str, str]) -> bool:
    """True where MMMU's ``parse_multi_choice_response`` finds no candidate and picks a random
    letter: no "(X)", "X " or "X." of a choice in the padded response, and (over five words)
    no option text in it. A guess counts as None (wrong for both)."""
    padded = " " + response.strip(",.!?;:'") + " "
    for form in ("({})", "{} ", "{}."):
        if any(form.format(letter) in padded for letter in letters):
            return False
    if len(padded.split()) > 5:
        return not any(text.lower() in padded.lower() for text in options.values())
    return True


def mmmu_records(repo: Path) -> list[dict]:
    """The Health & Medicine multiple-choice responses MMMU publishes: MMMU-Pro's GPT-4o runs
    (10 options; text+image "standard" and screenshot "vision"; chain-of-thought ending
    "Answer: X" and direct) with their published ``pred_indexs``, and MMMU's validation
    example outputs of LLaVA-1.5-13B (with its published parsed predictions) and Qwen-VL."""
    records = []
    for name, setting in MMMU_PRO_FILES.items():
        for line in _git_show(repo, f"mmmu-pro/output/{name}").decode().splitlines():
            row = json.loads(line)
            if row["subject"] not in MMMU_HEALTH:
                continue
            options = ast.literal_eval(row["options"])
            letters = list(OPTION_LETTERS[: len(options)])
            response = row["response"] if isinstance(row["response"], str) else ""
            by_letter = dict(zip(letters, options, strict=True))
            answer_line = response[response.rfind("Answer:") + 7 :] if "Answer:" in response else ""
            unique = [x for x in letters if x in answer_line]
            guessed = len(unique) != 1 and mmmu_guessed(response, letters, by_letter)
            records.append(
                {
                    "corpus": f"mmmu-pro-health/gpt-4o/{setting}",
                    "id": f"{row['id']}:{setting}",
                    "split": split_of(row["id"]),
                    "options": options,
                    "gold": row["answer"],
                    "response": response,
                    "published_pred": row["pred_indexs"],
                    "source_pred": None if guessed else row["pred_indexs"],
                }
            )
    llava_preds = json.loads(_git_show(repo, "mmmu/example_outputs/llava1.5_13b_val.json"))
    for model in MMMU_EXAMPLE_MODELS:
        for subject in sorted(MMMU_HEALTH):
            rows = json.loads(
                _git_show(repo, f"mmmu/example_outputs/{model}/{subject}/output.json")
            )
            for row in rows:
                if row["question_type"] != "multiple-choice":
                    continue
                letters = row["all_choices"]
                options = [row["index2ans"][x] for x in letters]
                published = llava_preds.get(row["id"]) if model.startswith("llava") else None
                guessed = mmmu_guessed(row["response"], letters, row["index2ans"])
                source = mmmu_extract_v1(row["response"], letters, row["index2ans"])
                records.append(
                    {
                        "corpus": f"mmmu-health/{model}",
                        "id": f"{row['id']}:{model}",
                        "split": split_of(row["id"]),
                        "options": options,
                        "gold": row["answer"],
                        "response": row["response"],
                        "published_pred": published,
                        "source_pred": None if guessed else source,
                    }
                )
    return records


def mmmu_extract_v1(response: str, letters: list[str], options: dict[str, str]) -> str | None:
    """MMMU's ``parse_multi_choice_response`` (mmmu/utils/eval_utils.py), re-written without
    its random fallback: "(X)" marks first, else "X " then "X." in the padded response, else
    (over five words) option texts; of several candidates the one written last."""
    padded = " " + response.strip(",.!?;:'") + " "
    for form, last in (("({})", "({})"), ("{} ", " {} "), ("{}.", " {} ")):
        found = [x for x in letters if form.format(x) in padded]
        if found:
            return max(found, key=lambda x: padded.rfind(last.format(x)))
    if len(padded.split()) > 5:
        lower = padded.lower()
        found = [x for x in letters if options[x].lower() in lower]
        if found:
            return max(found, key=lambda x: lower.rfind(options[x].lower()))
    return None


def split_of(item: str) -> str:
    """The deterministic tune / report half of a question: a hash of the question (not of the
    model or setting), so that all responses to one question are on one side."""
    return "tune" if hashlib.sha256(item.encode()).digest()[0] % 2 == 0 else "report"


# ------------------------------------------------------------------------------ build


def _git_show(repo: Path, path: str) -> bytes:
    return subprocess.run(
        ["git", "-C", str(repo), "show", f"HEAD:{path}"], check=True, capture_output=True
    ).stdout


def _git_ls(repo: Path, folder: str) -> list[str]:
    return subprocess.run(
        ["git", "-C", str(repo), "ls-tree", "-r", "--name-only", "HEAD", folder],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()


def _git_blobs(repo: Path, paths: list[str]) -> list[bytes]:
    """Many files of HEAD in one ``git cat-file --batch`` (tens of thousands of small files)."""
    request = "".join(f"HEAD:{path}\n" for path in paths).encode()
    out = subprocess.run(
        ["git", "-C", str(repo), "cat-file", "--batch"],
        input=request,
        check=True,
        capture_output=True,
    ).stdout
    blobs, pos = [], 0
    for _ in paths:
        header_end = out.index(b"\n", pos)
        size = int(out[pos:header_end].split()[2])
        blobs.append(out[header_end + 1 : header_end + 1 + size])
        pos = header_end + 1 + size + 1
    return blobs


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
    provenance = []
    for name, (records, per_group) in _issue26_pipelines(args).items():
        sample = _sample_by_group(records, per_group, random.Random(26))
        _write(out / f"{name}.jsonl", sample)
        provenance.append((f"{name}.jsonl", len(sample), len(records)))
        repo = Path(getattr(args, name.split("-")[0]))
        print(f"{name}: {len(sample)} of {len(records)}; commit {_git_head(repo)}")
    if not (args.mmlu_pro and args.lievin):
        return
    rng = random.Random(0)
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


def _issue26_pipelines(args: argparse.Namespace) -> dict[str, tuple[list[dict], int]]:
    """The pipelines added for issue #26 whose snapshots were given: name -> (records, n)."""
    found: dict[str, tuple[list[dict], int]] = {}
    if args.mirage:
        found["mirage-medrag"] = (mirage_records(Path(args.mirage)), MIRAGE_PER_GROUP)
    if args.mmmu:
        found["mmmu-health"] = (mmmu_records(Path(args.mmmu)), MMMU_PER_GROUP)
    return found


def _sample_by_group(records: list[dict], per_group: int, rng: random.Random) -> list[dict]:
    """A seeded sample of ``per_group`` responses of each model / setting (``corpus``)."""
    groups: dict[str, list[dict]] = {}
    for record in records:
        groups.setdefault(record["corpus"], []).append(record)
    return [
        record
        for name in sorted(groups)
        for record in rng.sample(groups[name], min(per_group, len(groups[name])))
    ]


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
        corpora: dict[str, list[dict]] = {
            name: records for name, (records, _) in _issue26_pipelines(args).items()
        }
        for model in (args.models or MMLU_PRO_MODELS) if args.mmlu_pro else ():
            corpora[f"mmlu-pro-health_{model}"] = mmlu_pro_records(Path(args.mmlu_pro), model)
        for dataset in LIEVIN_FILES if args.lievin else ():
            corpora[f"lievin-{dataset}"] = lievin_records(Path(args.lievin), dataset)
    else:
        corpora = {}
        for folder in args.data:
            corpora.update(load_corpora(Path(folder)))
    if args.split != "all":
        corpora = {
            name: [r for r in records if r.get("split", "report") == args.split]
            for name, records in corpora.items()
        }
        corpora = {name: records for name, records in corpora.items() if records}
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
    for sub_parser in (b, m := sub.add_parser("measure")):
        sub_parser.add_argument("--mmlu-pro", help="git dir of TIGER-AI-Lab/MMLU-Pro")
        sub_parser.add_argument("--lievin", help="git dir of vlievin/medical-reasoning")
        sub_parser.add_argument("--mirage", help="git dir of Teddy-XiongGZ/MIRAGE")
        sub_parser.add_argument("--mmmu", help="git dir of MMMU-Benchmark/MMMU")
    b.add_argument("--out", default=str(DATA))
    m.add_argument("--data", nargs="*", default=[str(DATA)], help="corpus folders")
    m.add_argument("--full", action="store_true", help="every response of the upstream files")
    m.add_argument("--split", choices=("tune", "report", "all"), default="all")
    m.add_argument("--models", nargs="*", help="MMLU-Pro models for --full (default: vendored)")
    m.add_argument("--compare", help="another answers.py whose extract_choice to score too")
    args = parser.parse_args(argv)
    {"build": build, "measure": measure}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
