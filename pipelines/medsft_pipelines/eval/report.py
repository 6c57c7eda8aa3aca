"""The evaluation report: results.json, report.md, plots and the operator's summary.json.

Everything is computed from the graded records by :mod:`.metrics`, so the numbers can be
recomputed from ``generations/`` alone.
"""

from __future__ import annotations

import io
import json
import struct
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from medsft_pipelines.answers import normalize_answer
from medsft_pipelines.specs.eval import GenerationSpec
from medsft_pipelines.specs.jobconfig import EvalJobConfig
from medsft_pipelines.storage import ObjectStore

from .backends.base import sampling_protocol
from .items import Benchmark, Family
from .layout import ACCURACY_PLOT_KEY, LENGTH_PLOT_KEY, REPORT_KEY, RESULTS_KEY, SUMMARY_KEY
from .metrics import BenchmarkScore, Record, group_means, group_records, score_benchmark
from .prompting import sampling_of

FAMILY_ORDER = [Family.TEXT, Family.MM_REASONING, Family.CLASSIFICATION]
FAMILY_SUMMARY_KEYS = {
    Family.TEXT.value: "meanAccuracyText",
    Family.MM_REASONING.value: "meanAccuracyMultimodalReasoning",
    Family.CLASSIFICATION.value: "meanAccuracyClassification",
}
"""``summary.json`` keys of the paper's three group means."""
TINY_MODEL_PARAMETERS = 10_000_000
"""Below this many parameters a model is a test model (the smallest real LLMs are ~100x larger)."""


def count_parameters(model_dir: Path) -> int | None:
    """Parameters of a Hugging Face model folder, from its safetensors headers (no weights
    are read); None when it has no safetensors files."""
    total, found = 0, False
    for path in sorted(model_dir.glob("*.safetensors")):
        with path.open("rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        for name, tensor in header.items():
            if name != "__metadata__":
                count = 1
                for dim in tensor["shape"]:
                    count *= dim
                total += count
        found = True
    return total if found else None


def _answer_key(kind: str, answer: str) -> str:
    # Option letters as given ("A"); open answers normalised, so "Yes." and "yes" agree.
    return answer.strip().upper() if kind == "choice" else normalize_answer(answer)


def majority_label(benchmark: Benchmark) -> dict[str, Any]:
    """The most frequent gold answer and the accuracy of always giving it (the label prior)."""
    counts = Counter(_answer_key(item.kind.value, item.answer) for item in benchmark.items)
    answer, count = counts.most_common(1)[0]
    return {"answer": answer, "accuracy": count / len(benchmark.items)}


def top_prediction(records: Sequence[Record]) -> dict[str, Any] | None:
    """The most frequent parsed answer and its share of all generations (None: none parsed)."""
    counts = Counter(_answer_key(r.kind, str(r.prediction)) for r in records if r.prediction)
    if not counts:
        return None
    answer, count = counts.most_common(1)[0]
    return {"answer": answer, "share": count / len(records)}


def protocol_of(gen: GenerationSpec) -> dict[str, Any]:
    """The sampling protocol every pass ran with, on either backend (seeds listed)."""
    protocol = sampling_protocol(sampling_of(gen, None, gen.base_seed))
    del protocol["seed"]
    return {
        "backend": gen.backend,
        **protocol,
        "seeds": list(range(gen.base_seed, gen.base_seed + gen.seeds)),
    }


def readings(records: Sequence[Record]) -> dict[str, float]:
    """Share of the generations whose answer was read each way (think + statement, structured
    field, answer-first, statement, inferred, unanswered), most frequent first."""
    counts = Counter(r.reading for r in records)
    return {reading: n / len(records) for reading, n in counts.most_common()} if records else {}


def build_results(
    config: EvalJobConfig,
    benchmarks: Sequence[Benchmark],
    records: Mapping[str, Sequence[Record]],
    labels: Sequence[str],
    layouts: Mapping[str, Mapping[str, Any]] | None = None,
    parameters: Mapping[str, int | None] | None = None,
) -> dict[str, Any]:
    """The results document: per-benchmark scores per model, group means, deltas, unparsed ids,
    the GPU layout each model was generated with (absent when served from the cache),
    answer-format adherence (parseable share), the label prior and the models' sizes."""
    gen = config.spec.generation
    model, baseline = labels[0], (labels[1] if len(labels) > 1 else None)
    scores: dict[str, dict[str, BenchmarkScore]] = {}
    unparsed: dict[str, dict[str, list[str]]] = {}
    for label in labels:
        by_bench = group_records(records[label])
        scores[label] = {
            b.name: score_benchmark(by_bench[b.name], majority_vote=gen.majority_vote)
            for b in benchmarks
        }
        unparsed[label] = {
            b.name: sorted({r.id for r in by_bench[b.name] if r.prediction is None})
            for b in benchmarks
        }
    family_of = {b.name: b.family.value for b in benchmarks}
    distribution_of = {b.name: b.distribution for b in benchmarks}
    accuracy = {label: {name: s.accuracy for name, s in scores[label].items()} for label in labels}
    groups: dict[str, dict[str, Any]] = {
        label: {
            "overall": sum(accuracy[label].values()) / len(accuracy[label]),
            "families": group_means(accuracy[label], family_of),
            "distributions": group_means(accuracy[label], distribution_of),
        }
        for label in labels
    }
    rows = []
    for b in benchmarks:
        by_bench = {label: group_records(records[label])[b.name] for label in labels}
        parseable = {label: 1.0 - scores[label][b.name].unparsed_rate for label in labels}
        rows.append(
            {
                "name": b.name,
                "split": b.split,
                "family": b.family.value,
                "distribution": b.distribution,
                "items": len(b),
                "scores": {label: asdict(scores[label][b.name]) for label in labels},
                "delta": (accuracy[model][b.name] - accuracy[baseline][b.name])
                if baseline
                else None,
                "parseable": parseable,
                "parseable_delta": (parseable[model] - parseable[baseline]) if baseline else None,
                "readings": {label: readings(by_bench[label]) for label in labels},
                "majority_label": majority_label(b),
                "top_prediction": {label: top_prediction(by_bench[label]) for label in labels},
            }
        )
    deltas = None
    if baseline:
        deltas = {
            "overall": groups[model]["overall"] - groups[baseline]["overall"],
            "families": {
                f: v - groups[baseline]["families"][f] for f, v in groups[model]["families"].items()
            },
            "distributions": {
                d: v - groups[baseline]["distributions"][d]
                for d, v in groups[model]["distributions"].items()
            },
        }
    return {
        "run": config.run.to_wire(),
        "generatedAt": datetime.now(UTC).isoformat(timespec="seconds"),
        "models": {
            model: config.model_uri,
            **({baseline: config.baseline_uri} if baseline else {}),
        },
        "baseline": baseline,
        "parameters": {label: (parameters or {}).get(label) for label in labels},
        "generation": gen.to_wire(),
        "sampling": protocol_of(gen),
        "benchmarks": rows,
        "groups": groups,
        "deltas": deltas,
        "unparsed": unparsed,
        "parallel": {label: dict(layout) for label, layout in (layouts or {}).items()},
    }


def summary(results: Mapping[str, Any], report_uri: str) -> dict[str, Any]:
    """The compact view the operator copies into ``EvalJob.status`` (camelCase, fractions)."""
    model, baseline = next(iter(results["models"])), results["baseline"]
    entries = []
    for row in results["benchmarks"]:
        score = row["scores"][model]
        entry = {
            "name": row["name"],
            "distribution": row["distribution"],
            "accuracy": round(score["accuracy"], 6),
            "accuracyStd": round(score["accuracy_std"], 6),
            "items": row["items"],
            "meanResponseTokens": round(score["length"]["mean"], 2),
        }
        if baseline:
            entry["baselineAccuracy"] = round(row["scores"][baseline]["accuracy"], 6)
        entries.append(entry)
    groups = results["groups"][model]
    out: dict[str, Any] = {
        "results": entries,
        "meanAccuracy": round(groups["overall"], 6),
        "reportUri": report_uri,
    }
    for dist, key in (("in", "meanAccuracyIn"), ("out", "meanAccuracyOut")):
        if dist in groups["distributions"]:
            out[key] = round(groups["distributions"][dist], 6)
    # The paper's groups: the mean per task family (only the families evaluated).
    for family, key in FAMILY_SUMMARY_KEYS.items():
        if family in groups["families"]:
            out[key] = round(groups["families"][family], 6)
    return out


def _protocol_line(protocol: Mapping[str, Any] | None) -> str:
    if not protocol:
        return ""
    return (
        f"Sampling ({protocol['backend']}; nothing taken from the checkpoint's "
        f"generation_config): temperature {protocol['temperature']}, top-p {protocol['top_p']}, "
        f"no top-k, repetition penalty {protocol['repetition_penalty']}, "
        f"{protocol['max_new_tokens']} new tokens"
        + (
            f" + {protocol['forced_exit_tokens']} after a forced think exit"
            if protocol["forced_exit_tokens"]
            else ""
        )
        + f", seeds {', '.join(map(str, protocol['seeds']))}."
    )


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def markdown(results: Mapping[str, Any]) -> str:
    """The human report."""
    model, baseline = next(iter(results["models"])), results["baseline"]
    gen = results["generation"]
    lines = [
        f"# Evaluation report: {results['run']['name']} (generation {results['run'].get('generation', 1)})",
        "",
        f"Model `{results['models'][model]}`"
        + (f", baseline **{baseline}** `{results['models'][baseline]}`" if baseline else "")
        + f". {gen['seeds']} seed(s), temperature {gen['temperature']}, top-p {gen['topP']}, "
        f"up to {gen['maxNewTokens']} new tokens, mode {gen['mode']}, backend {gen['backend']}.",
        _protocol_line(results.get("sampling")),
        *(
            f"GPU layout of {label}: {layout['description']}."
            for label, layout in results.get("parallel", {}).items()
        ),
        "",
        *comparison_markdown(results),
        "## Accuracy per benchmark (%)",
        "",
        "| benchmark | family | dist | items | accuracy (mean ± std) |"
        + (" baseline | Δ |" if baseline else "")
        + " token F1 | majority vote | unparsed | forced exit |",
        "|---|---|---|---|---|" + ("---|---|" if baseline else "") + "---|---|---|---|",
    ]
    for row in results["benchmarks"]:
        s = row["scores"][model]
        cells = [
            row["name"],
            row["family"],
            row["distribution"],
            str(row["items"]),
            f"{_pct(s['accuracy'])} ± {_pct(s['accuracy_std'])}",
        ]
        if baseline:
            cells += [_pct(row["scores"][baseline]["accuracy"]), f"{100 * row['delta']:+.1f}"]
        cells += [
            _pct(s["token_f1"]),
            _pct(s["majority_vote"]),
            _pct(s["unparsed_rate"]),
            _pct(s["forced_exit_rate"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Means (%)",
        "",
        "| group | " + " | ".join(results["models"]) + (" | Δ |" if baseline else " |"),
        "|---|" + "---|" * len(results["models"]) + ("---|" if baseline else ""),
    ]
    groups = results["groups"]
    keys = (
        [("overall", None)]
        + [("families", f) for f in groups[model]["families"]]
        + [("distributions", d) for d in groups[model]["distributions"]]
    )
    for kind, name in keys:
        values = [
            groups[m][kind] if name is None else groups[m][kind][name] for m in results["models"]
        ]
        label = (
            "overall"
            if name is None
            else (f"{name} (distribution)" if kind == "distributions" else name)
        )
        row = f"| {label} | " + " | ".join(_pct(v) for v in values)
        if baseline:
            delta = results["deltas"][kind] if name is None else results["deltas"][kind][name]
            row += f" | {100 * delta:+.1f}"
        lines.append(row + " |")
    lines += readings_markdown(results)
    lines += _per_model_table(
        results,
        "Response length (tokens, all seeds)",
        ["mean", "median", "p90", "think (mean)", "answer (mean)"],
        lambda length: [
            f"{length[key]:.0f}" for key in ("mean", "median", "p90", "think_mean", "answer_mean")
        ],
        lambda row, label: row["scores"][label]["length"],
    )
    lines += [
        "",
        f"![accuracy]({ACCURACY_PLOT_KEY})",
        "",
        f"![response length]({LENGTH_PLOT_KEY})",
        "",
    ]
    return "\n".join(lines)


def readings_markdown(results: Mapping[str, Any]) -> list[str]:
    """How answers were read, per benchmark and model (% of generations)."""
    return _per_model_table(
        results,
        "How answers were read (% of generations)",
        ["readings"],
        lambda shares: [
            ", ".join(f"{reading} {_pct(share)}" for reading, share in shares.items()) or "none"
        ],
        lambda row, label: row.get("readings", {}).get(label, {}),
    )


def _per_model_table(
    results: Mapping[str, Any],
    title: str,
    columns: Sequence[str],
    cells: Callable[[Any], list[str]],
    value: Callable[[Mapping[str, Any], str], Any],
) -> list[str]:
    """A section with one row per benchmark and model: ``cells(value(row, label))``."""
    lines = [
        "",
        f"## {title}",
        "",
        "| benchmark | model | " + " | ".join(columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for row in results["benchmarks"]:
        for label in results["models"]:
            lines.append(
                f"| {row['name']} | {label} | " + " | ".join(cells(value(row, label))) + " |"
            )
    return lines


def _size(parameters: int | None) -> str:
    if parameters is None:
        return "size unknown"
    if parameters >= 1e9:
        return f"{parameters / 1e9:.1f}B parameters"
    return f"{parameters / 1e6:.2g}M parameters"


def comparison_markdown(results: Mapping[str, Any]) -> list[str]:
    """Answer format and accuracy per benchmark, the baseline (if any) beside the model under
    test, against the label prior; then how to read the numbers."""
    model, baseline = next(iter(results["models"])), results["baseline"]
    parameters = results.get("parameters") or {}
    labels = [baseline, model] if baseline else [model]
    sizes = " and ".join(f"**{label}** ({_size(parameters.get(label))})" for label in labels)
    lines = [
        f"## {baseline} vs {model}" if baseline else "## Answers and accuracy",
        "",
        (
            f"Both evaluated with the same prompts, decoding settings and seeds: {sizes}. "
            f"Δ is {model} minus {baseline}, in percentage points."
            if baseline
            else f"Model {sizes}."
        ),
        "",
    ]
    header = ["benchmark", "items"]
    for metric in ("parseable answers", "accuracy"):
        header += [f"{metric}: {labels[0]}", *labels[1:]] + (["Δ"] if baseline else [])
    header += ["majority label", f"{model}'s most frequent answer"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in results["benchmarks"]:
        prior, top = row["majority_label"], row["top_prediction"][model]
        cells = [row["name"], str(row["items"])]
        cells += [_pct(row["parseable"][label]) for label in labels]
        if baseline:
            cells.append(f"{100 * row['parseable_delta']:+.1f}")
        cells += [_pct(row["scores"][label]["accuracy"]) for label in labels]
        if baseline:
            cells.append(f"{100 * row['delta']:+.1f}")
        cells += [
            f"{_pct(prior['accuracy'])} (always `{prior['answer']}`)",
            "none parsed" if top is None else f"`{top['answer']}` in {_pct(top['share'])}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += [
        "How to read these numbers:",
        "",
        "- **Parseable answers**: the share of responses with a final answer in the requested "
        "format (`Answer: <letter>`, `The answer is <letter>`, ...). An unparseable response is "
        "graded wrong, so this bounds accuracy; it is the first thing fine-tuning teaches.",
        "- **Accuracy**: the share graded correct, mean over seeds (± the std over seeds).",
        "- **Majority label**: the accuracy of always giving the most frequent correct answer of "
        "the benchmark slice. Accuracy near it, with one answer given most of the time, means the "
        "model learned the label prior (which answer is most common), not the task.",
    ]
    known = [p for p in parameters.values() if p is not None]
    if known and max(known) < TINY_MODEL_PARAMETERS:
        lines.append(
            f"- These are test-sized models (at most {_size(max(known))}; real ones have "
            "billions). At this size, fine-tuning teaches the answer format and the label prior, "
            "not medicine: the numbers show that the pipeline trains and measures end to end, "
            "not medical ability."
        )
    lines.append("")
    return lines


def _ordered(results: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    order = {f.value: i for i, f in enumerate(FAMILY_ORDER)}
    return sorted(
        results["benchmarks"], key=lambda r: (order[r["family"]], r["distribution"], r["name"])
    )


def plot_accuracy(results: Mapping[str, Any]) -> bytes:
    """Grouped bars: accuracy per benchmark, one bar per model, std as error bars."""
    rows, labels, x, width, fig, ax = _bar_figure(results)
    for i, label in enumerate(labels):
        acc = [100 * r["scores"][label]["accuracy"] for r in rows]
        std = [100 * r["scores"][label]["accuracy_std"] for r in rows]
        ax.bar(
            x + (i - (len(labels) - 1) / 2) * width, acc, width, yerr=std, capsize=2, label=label
        )
    ax.set_xticks(
        x,
        [f"{r['name']}\n({r['distribution']})" for r in rows],
        rotation=45,
        ha="right",
        fontsize=8,
    )
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(
        "Accuracy per benchmark" + (f" vs {results['baseline']}" if results["baseline"] else "")
    )
    ax.legend()
    return _png(fig)


def plot_response_length(results: Mapping[str, Any]) -> bytes:
    """Mean response tokens per benchmark, reasoning and answer stacked (the paper's Fig. 8)."""
    rows, labels, x, width, fig, ax = _bar_figure(results)
    for i, label in enumerate(labels):
        think = [r["scores"][label]["length"]["think_mean"] for r in rows]
        answer = [r["scores"][label]["length"]["answer_mean"] for r in rows]
        p90 = [r["scores"][label]["length"]["p90"] for r in rows]
        pos = x + (i - (len(labels) - 1) / 2) * width
        ax.bar(pos, think, width, label=f"{label}: reasoning")
        ax.bar(pos, answer, width, bottom=think, label=f"{label}: answer")
        ax.scatter(
            pos, p90, marker="_", color="black", s=80, zorder=3, label="p90" if i == 0 else None
        )
    ax.set_xticks(
        x, [f"{r['name']}\n[{r['family']}]" for r in rows], rotation=45, ha="right", fontsize=8
    )
    ax.set_ylabel("response tokens (mean)")
    ax.set_title("Response length per benchmark")
    ax.legend(fontsize=7)
    return _png(fig)


def _bar_figure(results: Mapping[str, Any]) -> tuple[list[Any], list[str], Any, float, Any, Any]:
    """What both plots start from: the benchmarks in report order, the model labels, the
    x position of each benchmark, the width of one model's bar, and the figure and axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = _ordered(results)
    labels = list(results["models"])
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows) + 2), 4))
    return rows, labels, np.arange(len(rows)), 0.8 / len(labels), fig, ax


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()


def write_report(
    out: ObjectStore,
    config: EvalJobConfig,
    benchmarks: Sequence[Benchmark],
    records: Mapping[str, Sequence[Record]],
    labels: Sequence[str],
    *,
    layouts: Mapping[str, Mapping[str, Any]] | None = None,
    parameters: Mapping[str, int | None] | None = None,
) -> dict[str, Any]:
    """Write plots, report.md, results.json, then summary.json last (its presence = done)."""
    results = build_results(config, benchmarks, records, labels, layouts, parameters)
    out.put_bytes(ACCURACY_PLOT_KEY, plot_accuracy(results))
    out.put_bytes(LENGTH_PLOT_KEY, plot_response_length(results))
    out.put_bytes(REPORT_KEY, markdown(results).encode())
    out.put_json(RESULTS_KEY, results)
    out.put_json(SUMMARY_KEY, summary(results, out.uri_of(RESULTS_KEY)))
    return results
