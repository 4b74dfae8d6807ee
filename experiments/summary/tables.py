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
    show: Callable[[dict], str | None] | None = None  # the Markdown cell from the whole row
    markdown: bool = True  # False: in the CSV and JSON only (e.g. interval bounds)


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
        shown = [c for c in self.columns if c.markdown]
        if self.rows:
            lines.append("| " + " | ".join(c.title for c in shown) + " |")
            lines.append("|" + "|".join("---:" if self._numeric(c) else "---" for c in shown) + "|")
            for row in self.rows:
                cells = [_md_cell(row, c) for c in shown]
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


def _md_cell(row: dict, col: Column) -> str:
    if col.show is not None:
        text = col.show(row)
        if text is not None:
            return text
    return _cell(row.get(col.key), col.fmt)


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


def fp(v) -> str:
    """A p-value: 3 decimals, scientific below 0.001."""
    v = float(v)
    return f"{v:.1e}" if 0 < v < 1e-3 else f"{v:.3f}"


def f4d(v) -> str:
    return f"{float(v):.4f}"


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
    for m in metrics:
        if m not in MAIN_METRICS:
            cols.append(Column(m, m, f1d))
            continue
        cols += [
            Column(m, m, f1d, show=_value_ci_sig(m)),
            Column(f"{m}_lo", f"{m} CI low", markdown=False),
            Column(f"{m}_hi", f"{m} CI high", markdown=False),
            Column(f"{m}_delta", f"{m} − unedited", markdown=False),
            Column(f"{m}_delta_lo", f"{m} − unedited CI low", markdown=False),
            Column(f"{m}_delta_hi", f"{m} − unedited CI high", markdown=False),
            Column(f"{m}_significant", f"{m} significant", markdown=False),
        ]
    table = Table(
        "editing",
        "1. Editing metrics (CounterFact, after the last batch)",
        cols,
        caption="Scores of the evaluated edited records; `unedited` is the first finished run's "
        "`before` (the same records on the unedited model). Brackets: 95 % bootstrap interval "
        "over records (GE: over the generation subset's records); `*`: the paired difference "
        "from the unedited model on the same records has a 95 % interval that excludes 0.",
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
        _add_intervals(row, fin.get("after_ci"), fin.get("after_minus_before"))
        table.rows.append(row)
        if unedited is None and isinstance(fin.get("before"), dict):
            unedited = {
                "run": "unedited",
                "method": "—",
                "num_edits": 0,
                "num_records": ev.get("num_records"),
            }
            unedited.update({m: _num(fin["before"].get(m)) for m in metrics})
            _add_intervals(unedited, fin.get("before_ci"), None)
    if unedited is not None:
        table.rows.insert(0, unedited)
    return table


def _bounds(v) -> tuple[float, float] | None:
    if isinstance(v, (list, tuple)) and len(v) == 2:
        lo, hi = _num(v[0]), _num(v[1])
        if lo is not None and hi is not None:
            return lo, hi
    return None


def _add_intervals(row: dict, ci, diff) -> None:
    """`{m}_lo/_hi` from final.json's `after_ci`/`before_ci`, `{m}_delta...` and
    `{m}_significant` from `after_minus_before` (when the run logged them)."""
    ci = ci if isinstance(ci, dict) else {}
    diff = diff if isinstance(diff, dict) else {}
    for m in MAIN_METRICS:
        b = _bounds(ci.get(m))
        if b is not None:
            row[f"{m}_lo"], row[f"{m}_hi"] = b
        d = diff.get(m)
        if isinstance(d, dict):
            row[f"{m}_delta"] = _num(d.get("value"))
            db = _bounds(d.get("ci"))
            if db is not None:
                row[f"{m}_delta_lo"], row[f"{m}_delta_hi"] = db
            if isinstance(d.get("significant"), bool):
                row[f"{m}_significant"] = d["significant"]


def value_ci(v, lo, hi, significant=None, fmt: Callable[[Any], str] = f1d) -> str | None:
    """ "v [lo, hi]" (with "*" when `significant`); None without a value or interval."""
    if _num(v) is None or _num(lo) is None or _num(hi) is None:
        return None
    return f"{fmt(v)} [{fmt(lo)}, {fmt(hi)}]" + ("*" if significant else "")


def _value_ci_sig(m: str) -> Callable[[dict], str | None]:
    def show(row: dict) -> str | None:
        return value_ci(
            row.get(m), row.get(f"{m}_lo"), row.get(f"{m}_hi"), row.get(f"{m}_significant")
        )

    return show


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
        Column("regularizer", "LTI / RECT / PRUNE"),
        Column("mean_target_prob", "edited-fact prob.", f3d),
        Column("mean_steps", "search steps", f1d),
        Column("search_time_per_edit_s", "search s/edit", f3d),
        Column("teacher_time_per_edit_s", "of it LTI teacher", f3d),
        Column("time_per_edit_s", "total s/edit", f3d),
        Column("steady_time_per_edit_s", "s/edit (batches 2..N)", f3d),
    ]
    title = "2. MPES, LTI and the regularizers: search stop, probability and time"
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
        teacher = [_num(b.get("teacher_time_s")) or 0.0 for b in r.batches]
        reg = r.config.get("regularize") if isinstance(r.config.get("regularize"), dict) else {}
        row = {
            "run": r.label,
            "method": r.method,
            "num_edits": r.num_edits,
            "mpes": None if patience is None else ("on" if patience > 0 else "off"),
            "mpes_patience": patience,
            "norm_lambda": _num(solve.get("norm_lambda")),
            "regularizer": _regularizer_text(search, reg),
            "mean_target_prob": _mean(_flat(r.batches, "target_prob")),
            "mean_steps": _mean(_flat(r.batches, "stop_steps")),
            "search_time_per_edit_s": sum(st) / total_edits if ok_search else None,
            "teacher_time_per_edit_s": sum(teacher) / total_edits if ok_search else None,
            "time_per_edit_s": (sum(st) + sum(ut)) / total_edits if ok_total else None,
            "steady_time_per_edit_s": _mean(steady),
            "num_batches": len(r.batches),
        }
        if len(r.batches) < 2:
            table.notes.append(f"{r.label}: only one batch, no steady-state time")
        fork = r.info.get("forked_from") if isinstance(r.info.get("forked_from"), dict) else None
        if fork:
            table.notes.append(
                f"{r.label}: forked from {fork.get('label')} after {fork.get('batches')} batches "
                "(their lines, times included, are that run's)"
            )
        table.rows.append(row)
    return table


def _regularizer_text(search: dict, reg: dict) -> str:
    """LTI (with its teacher positions), RECT (kept %), PRUNE (reference, when) of a config."""
    parts = []
    if search.get("lti"):
        parts.append(f"LTI ({search.get('teacher_positions', 'official')})")
    if _num(reg.get("rect_keep_percent")):
        parts.append(f"RECT {float(reg['rect_keep_percent']):g} %")
    if reg.get("prune"):
        parts.append(f"PRUNE ({reg.get('prune_reference')}, {reg.get('prune_when')})")
    return ", ".join(parts) or "—"


def downstream_table(runs: list[Run], metric: str, number: str) -> Table:
    tasks = _task_order(runs)
    cols = [Column("run", "run"), Column("num_edits", "edits")]
    for t in tasks:
        cols.append(Column(t, t, f1d, show=_value_ci_sig(t)))
        if metric == "f1_new":  # the likelihood protocol's per-item F1 has an interval
            cols += [
                Column(f"{t}_lo", f"{t} CI low", markdown=False),
                Column(f"{t}_hi", f"{t} CI high", markdown=False),
                Column(f"{t}_significant", f"{t} significant", markdown=False),
            ]
    cols += [Column("mean", "mean", f1d), Column("num_tasks", "tasks")]
    what = "f1" if metric == "f1" else "f1_new (likelihood-based)"
    caption = (
        "One row per evaluation point (0 edits = unedited model); mean over the tasks "
        "evaluated at that point."
    )
    if metric == "f1_new":
        caption += (
            " Brackets (likelihood protocol): 95 % bootstrap interval over test items; `*`: the "
            "paired F1 difference from the unedited model on the same items excludes 0."
        )
    table = Table(
        f"downstream_{metric}", f"{number}. Downstream {what} ×100", cols, caption=caption
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
                pw = res.get("power") if isinstance(res, dict) else None
                if metric == "f1_new" and isinstance(pw, dict):
                    b = _bounds((pw.get("f1") or {}).get("ci"))
                    if b is not None:
                        row[f"{t}_lo"], row[f"{t}_hi"] = 100 * b[0], 100 * b[1]
                    d = (pw.get("difference") or {}).get("f1")
                    if isinstance(d, dict) and isinstance(d.get("significant"), bool):
                        row[f"{t}_significant"] = d["significant"]
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
        Column("kl", "KL(edited ‖ unedited)", f4d),
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
        Column("mcnemar_p", "McNemar p", fp),
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
