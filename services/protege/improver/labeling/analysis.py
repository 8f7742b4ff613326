"""What the labeling functions do: per-LF coverage, overlaps, conflicts and empirical
accuracy on gold (as Snorkel's ``LFAnalysis``), the same per source and for the label
model's combined labels, and guided error analysis.

- :func:`lf_report` / :func:`format_lf_report`: ``protege lf report TASK [--json]``;
  :func:`save_lf_report` keeps a copy per training run.
- :func:`error_cases` / :func:`format_error_cases`: ``protege errors TASK``.

Definitions (Snorkel's ``LFAnalysis``; fractions of all N examples): *coverage*, the LF
votes; *overlaps*, it votes and another LF votes too; *conflicts*, it votes and another
LF votes a different label. *Accuracy* is over the examples with gold where it voted.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from protege.improver.labeling.functions import ABSTAIN, LabelMatrix
from protege.improver.labeling.label_model import majority_proba, to_labels

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- per LF


def lf_summary(matrix: LabelMatrix, gold_y: np.ndarray | None = None) -> list[dict]:
    """One row per LF (see module docstring); ``gold_y`` is -1 where unknown."""
    from snorkel.labeling import LFAnalysis

    L = matrix.L
    n_lfs = L.shape[1] if L.ndim == 2 else 0
    if len(L) and n_lfs:
        analysis = LFAnalysis(L)
        coverage, overlaps = analysis.lf_coverages(), analysis.lf_overlaps()
        conflicts = analysis.lf_conflicts()
    else:
        coverage = overlaps = conflicts = np.zeros(n_lfs)
    rows = []
    for j, name in enumerate(matrix.lf_names):
        col = L[:, j]
        mine = col != ABSTAIN
        row = {
            "name": name,
            "source": matrix.sources[j],
            "polarity": sorted({matrix.label_names[v] for v in np.unique(col[mine])}),
            "votes": int(mine.sum()),
            "coverage": float(coverage[j]),
            "overlaps": float(overlaps[j]),
            "conflicts": float(conflicts[j]),
            "errors": int(matrix.errors.get(name, 0)),
        }
        row.update(gold_stats(col, mine, gold_y))
        rows.append(row)
    return rows


def gold_stats(pred: np.ndarray, voted: np.ndarray, gold_y: np.ndarray | None) -> dict:
    if gold_y is None:
        return {"correct": 0, "incorrect": 0, "accuracy": None}
    judged = voted & (gold_y >= 0)
    correct = int((pred[judged] == gold_y[judged]).sum())
    incorrect = int(judged.sum()) - correct
    return {
        "correct": correct,
        "incorrect": incorrect,
        "accuracy": correct / (correct + incorrect) if correct + incorrect else None,
    }


def source_summary(
    matrix: LabelMatrix, gold_y: np.ndarray | None = None, seed: int = 0
) -> list[dict]:
    """Per source (rules, prompts, ...): coverage and gold accuracy of its LFs' majority vote."""
    rows = []
    for source in dict.fromkeys(matrix.sources):
        sub = matrix.columns([source])
        covered = sub.covered
        pred = to_labels(majority_proba(sub.L, len(matrix.label_names)), covered, seed)
        rows.append(
            {
                "source": source,
                "lfs": len(sub.lf_names),
                "coverage": float(covered.mean()) if len(covered) else 0.0,
            }
            | gold_stats(pred, covered, gold_y)
        )
    return rows


# --------------------------------------------------------------------------- report


def lf_report(data, seed: int = 0) -> dict:
    """The LF report of a :class:`~protege.improver.labeling.labeled.LabeledData`, as
    JSON-ready data: per LF, per source, combined (the label model), and the choice."""
    gold_y = data.gold_y
    labels = to_labels(data.probs, data.labeled, seed)
    combined = {
        "source": "label_model",
        "lfs": len(data.matrix.lf_names),
        "coverage": float(data.labeled.mean()) if len(data.labeled) else 0.0,
    } | gold_stats(labels, data.labeled, gold_y)
    split = data.split
    return {
        "task": data.task.name,
        "created_at": time.time(),
        "examples": len(data.points),
        "train": int((split == "train").sum()),
        "calibration": int((split == "calibration").sum()),
        "exam": int((split == "exam").sum()),
        "gold": len(data.gold),
        "gold_trusted": sum(1 for g in data.gold if g.trusted),
        "gold_exam": sum(1 for g in data.gold if g.split == "exam" and g.trusted),
        "label_model": data.fit.choice,
        "lfs": lf_summary(data.matrix, gold_y),
        "sources": source_summary(data.matrix, gold_y, seed),
        "combined": combined,
        "label_counts": _label_counts(labels, data.task.label_names),
    }


def save_lf_report(store, data, run_id: str | None = None) -> dict:
    """Keep a copy of the run's LF report, label-model choice included, in the store:
    call once per training run. Returns the report, with its ``report_id``."""
    report = lf_report(data)
    report["run_id"] = run_id
    report["report_id"] = store.save_report(data.task.name, "lf_report", report, run_id=run_id)
    return report


def _label_counts(labels: np.ndarray, names: Sequence[str]) -> dict[str, int]:
    counts = np.bincount(labels[labels >= 0], minlength=len(names))
    return {names[i]: int(c) for i, c in enumerate(counts) if c}


def _pct(value: float | None) -> str:
    return "    -" if value is None else f"{100 * value:5.1f}"


def format_lf_report(report: dict) -> str:
    """The report as a fixed-width table."""
    width = max([len(r["name"]) for r in report["lfs"]] + [len("label_model"), 12])
    head = (
        f"{'LF':<{width}}  {'source':<8}  {'cov%':>5}  {'ovl%':>5}  {'cfl%':>5}  "
        f"{'right':>5}  {'wrong':>5}  {'acc%':>5}  {'err':>4}  polarity"
    )
    summary = (
        f"task {report['task']}: {report['examples']} examples "
        f"({report['train']} train, {report['calibration']} calibration, {report['exam']} "
        f"exam), {report['gold']} gold ({report['gold_trusted']} trusted, "
        f"{report['gold_exam']} in the exam)"
    )
    choice = report["label_model"]
    lines = [
        summary,
        f"label model: {choice.get('chosen')} ({choice.get('reason', '')})",
        "",
        head,
        "-" * len(head),
    ]
    for r in report["lfs"]:
        polarity = ",".join(r["polarity"])
        lines.append(
            f"{r['name']:<{width}}  {r['source']:<8}  {_pct(r['coverage'])}  {_pct(r['overlaps'])}  "
            f"{_pct(r['conflicts'])}  {r['correct']:>5}  {r['incorrect']:>5}  {_pct(r['accuracy'])}  "
            f"{r['errors']:>4}  {polarity[:40]}"
        )
    lines += [
        "",
        f"{'source':<{width}}  {'LFs':>4}  {'cov%':>5}  {'right':>5}  {'wrong':>5}  {'acc%':>5}",
    ]
    for r in report["sources"] + [report["combined"]]:
        lines.append(
            f"{r['source']:<{width}}  {r['lfs']:>4}  {_pct(r['coverage'])}  {r['correct']:>5}  "
            f"{r['incorrect']:>5}  {_pct(r['accuracy'])}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- errors


def error_cases(data, limit_per_label: int | None = 20, seed: int = 0) -> dict[str, list[dict]]:
    """Examples worth a look, grouped by the label model's label: the foundation model
    and the label model disagree, or a reviewer said thumbs-down. Each lists the LFs
    that voted on it."""
    names = data.task.label_names
    labels = to_labels(data.probs, data.labeled, seed)
    groups: dict[str, list[dict]] = defaultdict(list)
    for i, x in enumerate(data.points):
        lm = names[labels[i]] if labels[i] >= 0 else None
        downs = [r.reviewer for r in x.reviews if r.verdict == "down"]
        fm = x.foundation_label
        reasons = []
        if fm is not None and lm is not None and fm != lm:
            reasons.append("fm_disagrees")
        if downs:
            reasons.append("thumbs_down")
        if not reasons:
            continue
        votes = {
            data.matrix.lf_names[j]: names[v]
            for j, v in enumerate(data.matrix.L[i])
            if v != ABSTAIN
        }
        groups[lm or "(no label)"].append(
            {
                "uid": x.uid,
                "text": x.text,
                "label_model": lm,
                "confidence": float(data.probs[i].max()) if lm else None,
                "foundation": fm,
                "served": x.served_label,
                "gold": names[data.gold_y[i]] if data.gold_y[i] >= 0 else None,
                "reasons": reasons,
                "thumbs_down_by": downs,
                "corrections": sorted(
                    {r.label for r in x.reviews if r.label and r.label != r.predicted}
                ),
                "votes": votes,
            }
        )
    ordered = dict(sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])))
    if limit_per_label is not None:
        ordered = {k: v[:limit_per_label] for k, v in ordered.items()}
    return ordered


def format_error_cases(groups: dict[str, list[dict]], totals: dict[str, int] | None = None) -> str:
    if not groups:
        return "no disagreements and no thumbs-down"
    lines = []
    for label, cases in groups.items():
        total = (totals or {}).get(label, len(cases))
        lines.append(f"== {label} ({total} case{'s' if total != 1 else ''}) ==")
        for c in cases:
            conf = f" {c['confidence']:.2f}" if c["confidence"] is not None else ""
            facts = [f"label model {c['label_model']}{conf}", f"FM {c['foundation']}"]
            if c["served"]:
                facts.append(f"served {c['served']}")
            if c["thumbs_down_by"]:
                facts.append("thumbs-down by " + ",".join(c["thumbs_down_by"]))
            if c["corrections"]:
                facts.append("corrected to " + ",".join(c["corrections"]))
            if c["gold"]:
                facts.append(f"gold {c['gold']}")
            text = " ".join(c["text"].split())
            lines.append(f"  - {text[:100]!r}")
            lines.append(f"    {'; '.join(facts)}")
            votes = ", ".join(f"{k}={v}" for k, v in c["votes"].items()) or "(no LF voted)"
            lines.append(f"    votes: {votes}")
        lines.append("")
    return "\n".join(lines).rstrip()
