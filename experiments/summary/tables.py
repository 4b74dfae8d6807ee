"""The summary tables (Markdown, CSV and JSON forms) computed from loaded runs."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .runs import (
    Run,
    _activation_points,
    _batch_sizes,
    _downstream_points,
    _flat,
    _layer_norm_at,
    _layer_value,
    _mean,
    _num,
    _task_order,
)

MAIN_METRICS = ("ES", "PS", "NS", "S", "GE")


@dataclass
class Column:
    key: str
    title: str
    fmt: Callable[[Any], str] | None = None


@dataclass
class Table:
    name: str  # file stem
    title: str
    columns: list[Column]
    rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    caption: str = ""

    def markdown(self) -> str:
        lines = [f"## {self.title}", ""]
        if self.caption:
            lines += [self.caption, ""]
        if self.rows:
            lines.append("| " + " | ".join(c.title for c in self.columns) + " |")
            lines.append(
                "|" + "|".join("---:" if self._numeric(c) else "---" for c in self.columns) + "|"
            )
            for row in self.rows:
                cells = [_cell(row.get(c.key), c.fmt) for c in self.columns]
                lines.append("| " + " | ".join(cells) + " |")
        else:
            lines.append("_(no data)_")
        if self.notes:
            lines.append("")
            lines += [f"- Note: {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def _numeric(self, col: Column) -> bool:
        return col.fmt is not None or any(
            isinstance(r.get(col.key), (int, float)) and not isinstance(r.get(col.key), bool)
            for r in self.rows
        )

    def csv_text(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow([c.key for c in self.columns])
        for row in self.rows:
            writer.writerow(
                ["" if row.get(c.key) is None else _csv_value(row.get(c.key)) for c in self.columns]
            )
        return buf.getvalue()

    def to_json(self) -> dict:
        return {
            "title": self.title,
            "columns": [c.key for c in self.columns],
            "headers": [c.title for c in self.columns],
            "rows": self.rows,
            "notes": self.notes,
        }


def _csv_value(v):
    if isinstance(v, float):
        return repr(round(v, 8))
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return v


def _cell(v, fmt) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if fmt is not None:
        try:
            return fmt(v)
        except (TypeError, ValueError):
            return str(v)
    return str(v)


def f1d(v) -> str:
    return f"{float(v):.1f}"


def f2d(v) -> str:
    return f"{float(v):.2f}"


def f3d(v) -> str:
    return f"{float(v):.3f}"


def fx(v) -> str:
    return f"×{float(v):.3f}"


def _with_batches(runs: list[Run], table: Table, note: str) -> Iterator[Run]:
    """The runs that logged batches, in order; `note` on `table` for each run that did not."""
    for r in runs:
        if r.batches:
            yield r
        else:
            table.notes.append(f"{r.label}: {note}")


def editing_table(runs: list[Run]) -> Table:
    extra: list[str] = []
    for r in runs:
        for part in ("before", "after"):
            scores = (r.final or {}).get(part)
            if isinstance(scores, dict):
                for k, v in scores.items():
                    if k not in MAIN_METRICS and k not in extra and _num(v) is not None:
                        extra.append(k)
    metrics = list(MAIN_METRICS) + sorted(
        extra, key=lambda k: (not k.endswith("_acc"), extra.index(k))
    )
    cols = [
        Column("run", "run"),
        Column("method", "method"),
        Column("num_edits", "edits"),
        Column("num_records", "records"),
    ]
    cols += [Column(m, m, f1d) for m in metrics]
    table = Table(
        "editing",
        "1. Editing metrics (CounterFact, after the last batch)",
        cols,
        caption="Scores of the evaluated edited records; `unedited` is the first finished run's "
        "`before` (the same records on the unedited model).",
    )
    unedited = None
    for r in runs:
        fin = r.final
        if fin is None:
            table.notes.append(
                f"{r.label}: no final.json, not in this table ({len(r.batches)} batch(es) logged)"
            )
            continue
        after = fin.get("after")
        if not isinstance(after, dict):
            table.notes.append(f"{r.label}: final.json has no `after` scores")
            continue
        ev = fin.get("evaluated") if isinstance(fin.get("evaluated"), dict) else {}
        row = {
            "run": r.label,
            "method": r.method,
            "num_edits": fin.get("num_edits", r.num_edits),
            "num_records": ev.get("num_records"),
        }
        row.update({m: _num(after.get(m)) for m in metrics})
        table.rows.append(row)
        if unedited is None and isinstance(fin.get("before"), dict):
            unedited = {
                "run": "unedited",
                "method": "—",
                "num_edits": 0,
                "num_records": ev.get("num_records"),
            }
            unedited.update({m: _num(fin["before"].get(m)) for m in metrics})
    if unedited is not None:
        table.rows.insert(0, unedited)
    return table


_MPES_CAPTION = (
    "Probability of the new target at the search's stop and search steps are means over all "
    "requests; times per edit are Σ time / Σ edits; the last column is the mean per-edit time of "
    "batches 2..N (batch 1 includes compilation)."
)
_NORMS_CAPTION = (
    "‖W‖_F of each edited layer on the unedited model (baseline.json) and after the last logged "
    "batch, their ratio, and ‖W−W₀‖_F after the last batch; `max` is the largest ‖W_out‖_F over "
    "all layers."
)


def mpes_table(runs: list[Run]) -> Table:
    cols = [
        Column("run", "run"),
        Column("method", "method"),
        Column("num_edits", "edits"),
        Column("mpes", "MPES"),
        Column("norm_lambda", "λ_n", lambda v: f"{float(v):g}"),
        Column("mean_target_prob", "edited-fact prob.", f3d),
        Column("mean_steps", "search steps", f1d),
        Column("search_time_per_edit_s", "search s/edit", f3d),
        Column("time_per_edit_s", "total s/edit", f3d),
        Column("steady_time_per_edit_s", "s/edit (batches 2..N)", f3d),
    ]
    title = "2. MPES: search stop, probability and time"
    table = Table("mpes", title, cols, caption=_MPES_CAPTION)
    for r in _with_batches(runs, table, "no batches.jsonl lines, skipped"):
        search = r.config.get("search") if isinstance(r.config.get("search"), dict) else {}
        solve = r.config.get("solve") if isinstance(r.config.get("solve"), dict) else {}
        patience = _num(search.get("mpes_patience"))
        sizes = _batch_sizes(r.batches)
        total_edits = sum(s for s in sizes if s)
        st = [_num(b.get("search_time_s")) for b in r.batches]
        ut = [_num(b.get("update_time_s")) for b in r.batches]
        ok_search = total_edits and all(x is not None for x in st) and all(s for s in sizes)
        ok_total = ok_search and all(x is not None for x in ut)
        steady = [b.get("time_per_edit_s") for b in r.batches[1:]]
        row = {
            "run": r.label,
            "method": r.method,
            "num_edits": r.num_edits,
            "mpes": None if patience is None else ("on" if patience > 0 else "off"),
            "mpes_patience": patience,
            "norm_lambda": _num(solve.get("norm_lambda")),
            "mean_target_prob": _mean(_flat(r.batches, "target_prob")),
            "mean_steps": _mean(_flat(r.batches, "stop_steps")),
            "search_time_per_edit_s": sum(st) / total_edits if ok_search else None,
            "time_per_edit_s": (sum(st) + sum(ut)) / total_edits if ok_total else None,
            "steady_time_per_edit_s": _mean(steady),
            "num_batches": len(r.batches),
        }
        if len(r.batches) < 2:
            table.notes.append(f"{r.label}: only one batch, no steady-state time")
        table.rows.append(row)
    return table


def downstream_table(runs: list[Run], metric: str, number: str) -> Table:
    tasks = _task_order(runs)
    cols = [Column("run", "run"), Column("num_edits", "edits")]
    cols += [Column(t, t, f1d) for t in tasks] + [
        Column("mean", "mean", f1d),
        Column("num_tasks", "tasks"),
    ]
    what = "f1" if metric == "f1" else "f1_new (likelihood-based)"
    table = Table(
        f"downstream_{metric}",
        f"{number}. Downstream {what} ×100",
        cols,
        caption="One row per evaluation point (0 edits = unedited model); mean over the tasks "
        "evaluated at that point.",
    )
    for r in runs:
        points = _downstream_points(r)
        if not points:
            if r.downstream or r.info.get("downstream"):
                table.notes.append(f"{r.label}: no downstream evaluation points")
            continue
        for p in points:
            row: dict[str, Any] = {"run": r.label, "num_edits": p["num_edits"]}
            vals = []
            for t in tasks:
                res = p["tasks"].get(t)
                v = _num(res.get(metric)) if isinstance(res, dict) else None
                row[t] = None if v is None else 100 * v
                if v is not None:
                    vals.append(100 * v)
            row["mean"] = sum(vals) / len(vals) if vals else None
            row["num_tasks"] = len(vals)
            table.rows.append(row)
        n_run = len({t for p in points for t in p["tasks"]})
        short = [
            p["num_edits"]
            for p in points
            if len(
                [
                    t
                    for t, v in p["tasks"].items()
                    if isinstance(v, dict) and _num(v.get(metric)) is not None
                ]
            )
            < n_run
        ]
        if short:
            table.notes.append(
                f"{r.label}: {metric} missing for some tasks at {short} edits (mean over the rest)"
            )
    return table


def norms_table(runs: list[Run]) -> Table:
    cols = [
        Column("run", "run"),
        Column("num_edits", "edits"),
        Column("layer", "layer"),
        Column("norm_before", "‖W‖ before", f2d),
        Column("norm_after", "‖W‖ after", f2d),
        Column("growth", "growth", fx),
        Column("distance", "‖W−W₀‖", f2d),
    ]
    table = Table(
        "norms", "4. Weight norms of the MLP output matrices", cols, caption=_NORMS_CAPTION
    )
    for r in _with_batches(runs, table, "no batches, skipped"):
        last = r.batches[-1]
        base = r.baseline_layer_norms
        if base is None:
            table.notes.append(f"{r.label}: no baseline.json layer_norms, no `before` values")
        for layer in r.layers:
            before = _num(base[layer]) if base and 0 <= layer < len(base) else None
            after = _layer_norm_at(last, layer)
            table.rows.append(
                {
                    "run": r.label,
                    "num_edits": last.get("num_edits"),
                    "layer": layer,
                    "norm_before": before,
                    "norm_after": after,
                    "growth": after / before if after is not None and before else None,
                    "distance": _layer_value(last, "distance_from_original", layer),
                }
            )
        norms_after = [x for x in map(_num, last.get("layer_norms") or []) if x is not None]
        if not norms_after:
            norms_after = [
                x for x in (_layer_norm_at(last, layer) for layer in r.layers) if x is not None
            ]
            if norms_after:
                table.notes.append(
                    f"{r.label}: no layer_norms in the last batch; `max` is over edited layers"
                )
        base_vals = [x for x in map(_num, base or []) if x is not None]
        if norms_after:
            mb, ma = (max(base_vals) if base_vals else None), max(norms_after)
            table.rows.append(
                {
                    "run": r.label,
                    "num_edits": last.get("num_edits"),
                    "layer": "max",
                    "norm_before": mb,
                    "norm_after": ma,
                    "growth": ma / mb if mb else None,
                    "distance": None,
                }
            )
    return table


def activation_table(runs: list[Run]) -> Table | None:
    if not any(r.activation for r in runs):
        return None
    layers: list[int] = sorted({layer for r in runs for layer in r.layers})
    cols = [Column("run", "run"), Column("point", "point"), Column("num_edits", "edits")]
    cols += [Column(f"L{layer}", f"L{layer}", f3d) for layer in layers]
    table = Table(
        "activation",
        "5. MLP activation share of the edited layers",
        cols,
        caption="Share of the MLP in each layer's residual update (mlp_share) at the first and "
        "last evaluation points.",
    )
    for r in runs:
        pts = _activation_points(r)
        if not pts:
            table.notes.append(f"{r.label}: no activation.jsonl points")
            continue
        chosen = [("first", pts[0])] + ([("last", pts[-1])] if len(pts) > 1 else [])
        for name, p in chosen:
            share = p["mlp_share"]
            row = {"run": r.label, "point": name, "num_edits": int(p["num_edits"])}
            for layer in layers:
                ok = layer in r.layers and 0 <= layer < len(share)
                row[f"L{layer}"] = _num(share[layer]) if ok else None
            table.rows.append(row)
    return table


def _ci(v) -> str | None:
    """ "[lo, hi]" of a logged interval (None when absent)."""
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(_num(x) is not None for x in v):
        return f"[{_num(v[0]):.3f}, {_num(v[1]):.3f}]"
    return None


def heldout_table(runs: list[Run]) -> Table | None:
    """Held-out perplexity and drift at every logged point, with their 95 % intervals (unit: the
    document)."""
    if not any(r.heldout for r in runs):
        return None
    cols = [
        Column("run", "run"),
        Column("num_edits", "edits"),
        Column("perplexity", "perplexity", f3d),
        Column("perplexity_ci", "95 % CI"),
        Column("kl", "KL(edited ‖ unedited)", fx),
        Column("kl_ci", "95 % CI"),
        Column("top1_agreement", "top-1 agreement", f3d),
        Column("top1_agreement_ci", "95 % CI"),
    ]
    table = Table(
        "heldout",
        "6. Held-out perplexity and drift from the unedited model",
        cols,
        caption="Held-out text C0 never saw (heldout.jsonl; edits 0 = the unedited model). "
        "Intervals: bootstrap over documents.",
    )
    for r in runs:
        if not r.heldout:
            continue
        for p in sorted(r.heldout, key=lambda x: _num(x.get("num_edits")) or 0):
            table.rows.append(
                {
                    "run": r.label,
                    "num_edits": int(_num(p.get("num_edits")) or 0),
                    "perplexity": _num(p.get("perplexity")),
                    "perplexity_ci": _ci(p.get("perplexity_ci")),
                    "kl": _num(p.get("kl")),
                    "kl_ci": _ci(p.get("kl_ci")),
                    "top1_agreement": _num(p.get("top1_agreement")),
                    "top1_agreement_ci": _ci(p.get("top1_agreement_ci")),
                }
            )
    return table


def retention_table(runs: list[Run]) -> Table | None:
    """Efficacy of each earlier batch at every retention point (retention.jsonl)."""
    if not any(r.retention for r in runs):
        return None
    cols = [
        Column("run", "run"),
        Column("num_edits", "edits"),
        Column("batch", "batch"),
        Column("ES", "ES", f1d),
        Column("ES_ci", "95 % CI"),
        Column("PS", "PS", f1d),
        Column("n", "records"),
    ]
    table = Table(
        "retention",
        "7. Retention of earlier edits",
        cols,
        caption="ES/PS of each earlier batch's records (a seeded sample) on the model at that "
        "point; intervals: bootstrap over records.",
    )
    for r in runs:
        for point in r.retention:
            for b in point.get("batches", []):
                ci = b.get("ci") if isinstance(b.get("ci"), dict) else {}
                table.rows.append(
                    {
                        "run": r.label,
                        "num_edits": int(_num(point.get("num_edits")) or 0),
                        "batch": b.get("batch"),
                        "ES": _num(b.get("ES")),
                        "ES_ci": _ci(ci.get("ES")),
                        "PS": _num(b.get("PS")),
                        "n": b.get("n"),
                    }
                )
    return table


def downstream_power_table(runs: list[Run]) -> Table | None:
    """The likelihood protocol's downstream accuracy with its CI over items, and the paired
    difference from the unedited model (CI, significant, McNemar's exact p) at every point."""
    if not any(
        "power" in t for r in runs for p in _downstream_points(r) for t in p["tasks"].values()
    ):
        return None
    cols = [
        Column("run", "run"),
        Column("num_edits", "edits"),
        Column("task", "task"),
        Column("accuracy", "accuracy", f3d),
        Column("accuracy_ci", "95 % CI"),
        Column("diff", "Δ vs unedited", f3d),
        Column("diff_ci", "95 % CI of Δ"),
        Column("significant", "significant"),
        Column("mcnemar_p", "McNemar p", fx),
        Column("n", "items"),
    ]
    table = Table(
        "downstream_power",
        "3c. Downstream accuracy (answer likelihood, every test item) with paired differences",
        cols,
        caption="Intervals: bootstrap over test items; Δ: the same items on the unedited model, "
        "significant when its interval excludes 0.",
    )
    for r in runs:
        for p in _downstream_points(r):
            for task, res in p["tasks"].items():
                pw = res.get("power") if isinstance(res, dict) else None
                if not isinstance(pw, dict) or "accuracy" not in pw:
                    continue
                diff = (pw.get("difference") or {}).get("accuracy") or {}
                table.rows.append(
                    {
                        "run": r.label,
                        "num_edits": p["num_edits"],
                        "task": task,
                        "accuracy": _num(pw["accuracy"].get("value")),
                        "accuracy_ci": _ci(pw["accuracy"].get("ci")),
                        "diff": _num(diff.get("value")),
                        "diff_ci": _ci(diff.get("ci")),
                        "significant": diff.get("significant"),
                        "mcnemar_p": _num((pw.get("mcnemar") or {}).get("p")),
                        "n": pw.get("n"),
                    }
                )
    return table
