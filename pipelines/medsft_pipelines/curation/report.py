"""The curation report: JSON + Markdown + PNG plots, written next to the dataset.

Plots: response-length histograms per source/task (the spread the recipe wants), rows per
source, verification accept rates per source/task, samples removed by reason. Everything here
is counts and lengths: no sample text.
"""

from __future__ import annotations

import io
import json
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medsft_pipelines.specs.jobconfig import CurationJobConfig
from medsft_pipelines.storage import ObjectStore

from .layout import REPORT_JSON, REPORT_MD

PUBLISHED = {
    "instances": 8_100_000,
    "image_fraction": 0.455,
    "unique_questions": 1_800_000,
    "unique_images": 494_000,
    "mean_trace_tokens": 840,
}
"""The published mix, for comparison in the report."""

VERDICTS = ("accepted", "wrong_answer", "unparseable", "no_think")


def _stats(values: Sequence[int]) -> dict[str, float]:
    if not values:
        return {"count": 0}
    arr = np.asarray(values)
    return {
        "count": int(arr.size),
        "mean": round(float(arr.mean()), 1),
        "p50": float(np.percentile(arr, 50)),
        "p90": float(np.percentile(arr, 90)),
        "max": int(arr.max()),
        "sum": int(arr.sum()),
    }


def token_stats(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Token statistics of the final rows (the manifest's ``token_stats``)."""
    n = [int(r["n_tokens"]) for r in rows]
    t = [int(r["trace_tokens"]) for r in rows]
    return {
        "samples": len(rows),
        "total_tokens": int(sum(n)),
        "response_tokens": int(sum(t)),
        "n_tokens": _stats(n),
        "trace_tokens": _stats(t),
    }


def _group(counts: Mapping[str, int], prefix: str) -> dict[str, Any]:
    """Nested dict of the counts under ``prefix/`` (``a/b/c -> {a: {b: {c: n}}}``)."""
    tree: dict[str, Any] = {}
    for name, value in counts.items():
        if not name.startswith(prefix + "/"):
            continue
        parts = name[len(prefix) + 1 :].split("/")
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = node.get(parts[-1], 0) + value
    return tree


def teacher_budget(counts: Mapping[str, int]) -> dict[str, int]:
    """What the teacher cost and what was saved: every HTTP attempt (retries and timeouts
    included: a timed-out attempt may be billed, its tokens unknown), the tokens billed, the
    questions answered from the response cache (hits) or not (misses), and every question
    dropped without needing a trace (dedup, class balance, caps, weights), never sent."""

    def total(prefix: str, suffix: str = "") -> int:
        return sum(v for k, v in counts.items() if k.startswith(prefix) and k.endswith(suffix))

    return {
        "requests_made": total("teacher/", "/requests"),
        "http_attempts": total("teacher/", "/attempts"),
        "retries": total("teacher/", "/retries"),
        "timeouts": total("teacher/", "/timeouts"),
        "samples_requested": total("teacher/", "/samples"),
        "prompt_tokens": total("teacher/", "/prompt_tokens"),
        "completion_tokens": total("teacher/", "/completion_tokens"),
        "cache_hits": total("teacher/", "/cache_hits"),
        "cache_misses": total("teacher/", "/cache_misses"),
        "cached_samples": total("teacher/", "/cached_samples"),
        "questions_sent": total("teacher_sent/questions/"),
        "questions_saved": total("teacher_saved/questions/"),
        "samples_saved": total("teacher_saved/samples/"),
    }


def build_report(
    config: CurationJobConfig,
    counts: Counter[str],
    rows: Sequence[Mapping[str, Any]],
    *,
    spec_hash: str,
) -> dict[str, Any]:
    """The report as a JSON-able dict."""
    spec = config.spec
    traces = _group(counts, "traces")
    accept: dict[str, dict[str, Any]] = {}
    for source_name, tasks in traces.items():
        for task, c in tasks.items():
            generated = c.get("generated", 0)
            accept[f"{source_name}/{task}"] = {
                **{v: c.get(v, 0) for v in VERDICTS},
                "generated": generated,
                "over_max_correct": c.get("over_max_correct", 0),
                "accept_rate": round(c.get("accepted", 0) / generated, 4) if generated else None,
            }
    removed = _group(counts, "removed")
    removed_by_reason = {reason: sum(by_source.values()) for reason, by_source in removed.items()}
    quarantined = _group(counts, "quarantined")
    quarantine_by_reason: Counter[str] = Counter()
    for by_reason in quarantined.values():
        quarantine_by_reason.update(by_reason)

    by_group: dict[str, list[int]] = defaultdict(list)
    for r in rows:
        by_group[f"{r['source']}/{r['task_type']}"].append(int(r["trace_tokens"]))
    image_rows = sum(1 for r in rows if r["modality"] == "image")
    per_source = {}
    read = _group(counts, "read")
    final = _group(counts, "final").get("rows", {})
    for source in spec.sources:
        per_source[source.name] = {
            "task": source.task,
            "modality": source.modality,
            "rows_read": read.get(source.name, 0),
            "quarantined": quarantined.get(source.name, {}),
            "removed": {
                reason: v[source.name] for reason, v in removed.items() if source.name in v
            },
            "questions_with_traces": _group(counts, "questions")
            .get(source.name, {})
            .get("with_traces", 0),
            "final_rows": final.get(source.name, 0),
        }
    stats = token_stats(rows)
    return {
        "spec_hash": spec_hash,
        "run": config.run.to_wire(),
        "workers": config.workers,
        "totals": {
            "rows": len(rows),
            "unique_questions": len({r["question_id"] for r in rows}),
            "unique_images": len({i for r in rows for i in r["image_ids"]}),
            "image_fraction": round(image_rows / len(rows), 4) if rows else 0.0,
            "total_tokens": stats["total_tokens"],
            "response_tokens": stats["response_tokens"],
            "mean_trace_tokens": stats["trace_tokens"].get("mean", 0.0),
            "rows_read": sum(read.values()),
            "quarantined_rows": sum(quarantine_by_reason.values()),
        },
        "published_reference": PUBLISHED,
        "sources": per_source,
        "verification": accept,
        "removed_by_reason": removed_by_reason,
        "quarantine_by_reason": dict(quarantine_by_reason),
        "quarantine_traces": _group(counts, "quarantine_trace"),
        "decontamination": _group(counts, "decontam"),
        "teacher": _group(counts, "teacher"),
        "teacher_budget": teacher_budget(counts),
        "length_mixture_achieved_permille": _group(counts, "length_mixture").get(
            "achieved_permille", {}
        ),
        "trace_tokens": {g: _stats(v) for g, v in sorted(by_group.items())},
        "token_stats": stats,
        "cpu_seconds": {k: v / 1000 for k, v in _group(counts, "cpu_ms").items()},
        "histograms": {g: _histogram(v) for g, v in sorted(by_group.items())},
    }


def _histogram(values: Sequence[int], bins: int = 20) -> dict[str, list[float]]:
    counts, edges = np.histogram(np.asarray(values), bins=bins)
    return {"counts": counts.tolist(), "edges": [round(float(e), 1) for e in edges]}


def to_markdown(report: Mapping[str, Any]) -> str:
    """A human summary of the report."""
    t = report["totals"]
    lines = [
        "# Curation report",
        "",
        f"spec hash `{report['spec_hash']}`, {report['workers']} worker(s)",
        "",
        "| | this dataset | published mix |",
        "| --- | ---: | ---: |",
        f"| instances | {t['rows']:,} | {PUBLISHED['instances']:,} |",
        f"| image fraction | {t['image_fraction']:.1%} | {PUBLISHED['image_fraction']:.1%} |",
        f"| unique questions | {t['unique_questions']:,} | {PUBLISHED['unique_questions']:,} |",
        f"| unique images | {t['unique_images']:,} | {PUBLISHED['unique_images']:,} |",
        f"| mean response tokens | {t['mean_trace_tokens']} | {PUBLISHED['mean_trace_tokens']} |",
        "",
        f"Rows read: {t['rows_read']:,}; quarantined: {t['quarantined_rows']:,}; "
        f"tokens: {t['total_tokens']:,} (responses {t['response_tokens']:,}).",
        "",
        "## Sources",
        "",
        "| source | task | modality | read | quarantined | removed | with traces | final rows |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, s in report["sources"].items():
        lines.append(
            f"| {name} | {s['task']} | {s['modality']} | {s['rows_read']:,} | "
            f"{sum(s['quarantined'].values()):,} | {sum(s['removed'].values()):,} | "
            f"{s['questions_with_traces']:,} | {s['final_rows']:,} |"
        )
    lines += ["", "## Verification (rejection sampling)", ""]
    lines += [
        "| source/task | generated | accepted | wrong | unparseable | no think | accept rate |"
    ]
    lines += ["| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for group, v in report["verification"].items():
        rate = "n/a" if v["accept_rate"] is None else f"{v['accept_rate']:.1%}"
        lines.append(
            f"| {group} | {v['generated']:,} | {v['accepted']:,} | {v['wrong_answer']:,} | "
            f"{v['unparseable']:,} | {v['no_think']:,} | {rate} |"
        )
    budget = report["teacher_budget"]
    lines += [
        "",
        "## Teacher budget",
        "",
        f"{budget['questions_sent']:,} questions sent to the teacher: "
        f"{budget['cache_hits']:,} answered from the response cache "
        f"({budget['cached_samples']:,} cached samples), {budget['cache_misses']:,} "
        f"needed the endpoint: {budget['requests_made']:,} requests answered for "
        f"{budget['samples_requested']:,} samples.",
        "",
        "| HTTP attempts | retries | timed out | prompt tokens | completion tokens |",
        "| ---: | ---: | ---: | ---: | ---: |",
        f"| {budget['http_attempts']:,} | {budget['retries']:,} | {budget['timeouts']:,} | "
        f"{budget['prompt_tokens']:,} | {budget['completion_tokens']:,} |",
        "",
        "Every attempt may be billed; a timed-out one has no token count. "
        f"Saved: {budget['questions_saved']:,} questions ({budget['samples_saved']:,} samples) "
        "dropped before the teacher by dedup, class balance, caps and weights.",
    ]
    lines += ["", "## Removed by reason", "", "| reason | samples |", "| --- | ---: |"]
    lines += [f"| {r} | {n:,} |" for r, n in sorted(report["removed_by_reason"].items())]
    lines += [
        "",
        "## Decontamination",
        "",
        "| benchmark | reason | removed |",
        "| --- | --- | ---: |",
    ]
    for bench, reasons in sorted(report["decontamination"].items()):
        lines += [f"| {bench} | {r} | {n:,} |" for r, n in sorted(reasons.items())]
    lines += ["", "## Quarantine", "", "| reason | count |", "| --- | ---: |"]
    lines += [f"| {r} | {n:,} |" for r, n in sorted(report["quarantine_by_reason"].items())]
    lines += [
        f"| {r} (responses) | {n:,} |" for r, n in sorted(report["quarantine_traces"].items())
    ]
    lines += [
        "",
        "## Response lengths (tokens)",
        "",
        "| source/task | rows | mean | p50 | p90 | max |",
    ]
    lines += ["| --- | ---: | ---: | ---: | ---: | ---: |"]
    for group, s in report["trace_tokens"].items():
        lines.append(
            f"| {group} | {s['count']:,} | {s['mean']} | {s['p50']} | {s['p90']} | {s['max']} |"
        )
    lines += [
        "",
        "![response lengths](trace_lengths.png)",
        "![rows per source](rows_per_source.png)",
    ]
    lines += [
        "![accept rates](accept_rates.png)",
        "![removed by reason](removed_by_reason.png)",
        "",
    ]
    return "\n".join(lines)


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def plots(report: Mapping[str, Any]) -> dict[str, bytes]:
    """PNG plots of the report, by file name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for group, h in report["histograms"].items():
        edges = np.asarray(h["edges"])
        ax.stairs(h["counts"], edges, label=group)
    ax.set_xlabel("response tokens (think + answer)")
    ax.set_ylabel("samples")
    ax.set_title("Response length per source/task")
    if report["histograms"]:
        ax.legend(fontsize=8)
    out["trace_lengths.png"] = _png(fig)

    def bars(name: str, labels: list[str], values: list[float], title: str, xlabel: str) -> None:
        fig, ax = plt.subplots(figsize=(8, max(2.5, 0.4 * len(labels) + 1)))
        ax.barh(labels or ["(none)"], values or [0])
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        out[name] = _png(fig)

    sources = report["sources"]
    bars(
        "rows_per_source.png",
        list(sources),
        [s["final_rows"] for s in sources.values()],
        "Final rows per source",
        "rows",
    )
    rates = {
        g: v["accept_rate"]
        for g, v in report["verification"].items()
        if v["accept_rate"] is not None
    }
    bars(
        "accept_rates.png",
        list(rates),
        list(rates.values()),
        "Verification accept rate",
        "accepted / generated",
    )
    removed = dict(report["removed_by_reason"])
    removed.update({f"quarantine: {r}": n for r, n in report["quarantine_by_reason"].items()})
    bars(
        "removed_by_reason.png",
        list(removed),
        list(removed.values()),
        "Removed by reason",
        "samples",
    )
    return out


def write_report(store: ObjectStore, report: Mapping[str, Any]) -> list[str]:
    """Write report.json, report.md and the plots into ``store``; returns the keys written."""
    files = {
        REPORT_JSON: json.dumps(report, indent=2, sort_keys=True).encode(),
        REPORT_MD: to_markdown(report).encode(),
        **plots(report),
    }
    for name, data in files.items():
        store.put_bytes(name, data)
    return sorted(files)
