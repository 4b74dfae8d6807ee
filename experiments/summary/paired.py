"""Paired differences: every run against the unedited model and every pair of runs, on the same
units (held-out documents, downstream test items, CounterFact records), with 95 % bootstrap
intervals and a plain statement of which differences are significant.

A difference is *significant* only when its paired interval excludes 0. The units are resampled
jointly for both sides, so what is compared is the two models on the same documents, items or
records; the runs must share them (the same --heldout_text/--heldout_docs, downstream items and
records), and a pair that does not is reported in a note, never compared.

Measures (the difference is always A − B):
- `perplexity`: mean NLL per held-out token (its difference is the log of the perplexity ratio);
- `KL`: KL(edited ‖ unedited) per token; against the unedited model, the KL itself;
- `top-1 agreement` with the unedited model;
- `<task> accuracy`: the likelihood protocol's per-item correctness, with McNemar's exact p;
- `retention ES` / `retention PS`: the success rate of the retention sample of every batch edited
  so far, pooled over batches (against the unedited model: the same records before editing;
  "itself at n edits": the records of the first retention point again at a later one, i.e. how
  much of what was edited by then has been lost since);
- `final ES` / `PS` / `NS`: every evaluated record after the last batch.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from jaxedit import heldout, uncertainty
from jaxedit.downstream import power

from .runs import Run, _downstream_points, _num
from .tables import Column, Table, f3d, fp

UNEDITED = "unedited"
SEED = 0


def _mean100(x) -> float:
    x = np.asarray(x, np.float64)
    with np.errstate(all="ignore"):
        return float(100.0 * np.nanmean(x)) if np.isfinite(x).any() else float("nan")


def _heldout_points(r: Run) -> dict[int, dict]:
    """{num_edits: heldout.jsonl row with per-document sums}; the unedited row is 0."""
    out = {}
    for p in r.heldout:
        n = _num(p.get("num_edits"))
        if n is not None and isinstance(p.get("per_doc"), dict):
            out[int(n)] = p["per_doc"]
    return out


def _downstream_items(r: Run) -> dict[int, dict[str, dict]]:
    """{num_edits: {task: {"labels", "preds"}}} of the likelihood protocol's points."""
    out: dict[int, dict[str, dict]] = {}
    for p in _downstream_points(r):
        for task, res in p["tasks"].items():
            items = res.get("items") if isinstance(res, dict) else None
            if isinstance(items, dict) and "labels" in items and "preds" in items:
                out.setdefault(p["num_edits"], {})[task] = items
    return out


def _baseline_records(r: Run) -> dict[Any, dict[str, float]]:
    """{case_id: {"ES", "PS", "NS"}} of the unedited model (baseline.json's per-record results)."""
    base = r.baseline or {}
    ids, recs = base.get("case_ids"), base.get("records")
    if not isinstance(ids, list) or not isinstance(recs, list) or len(ids) != len(recs):
        return {}
    from jaxedit import metrics

    vals = metrics.counterfact_record_values(recs)
    return {cid: {k: float(vals[k][i]) for k in vals} for i, cid in enumerate(ids)}


def _retention_records(r: Run) -> dict[int, dict[Any, dict[str, float]]]:
    """{num_edits: {case_id: {"ES", "PS"}}}: every batch's retention sample at each point."""
    out: dict[int, dict[Any, dict[str, float]]] = {}
    for point in r.retention:
        n = _num(point.get("num_edits"))
        if n is None:
            continue
        recs: dict[Any, dict[str, float]] = {}
        for b in point.get("batches", []):
            per = b.get("records")
            if not isinstance(per, dict) or not isinstance(b.get("case_ids"), list):
                continue
            for j, cid in enumerate(b["case_ids"]):
                recs[cid] = {
                    k: (np.nan if v[j] is None else float(v[j]))
                    for k, v in per.items()
                    if isinstance(v, list) and j < len(v)
                }
        if recs:
            out[int(n)] = recs
    return out


def _final_records(r: Run) -> dict[Any, dict[str, float]]:
    rec = (r.final or {}).get("after_records")
    if not isinstance(rec, dict) or not isinstance(rec.get("case_ids"), list):
        return {}
    keys = [k for k in ("ES", "PS", "NS") if isinstance(rec.get(k), list)]
    return {
        cid: {k: (np.nan if rec[k][i] is None else float(rec[k][i])) for k in keys}
        for i, cid in enumerate(rec["case_ids"])
    }


def _row(comparison, n, measure, res, unit, p=None, scale=1.0) -> dict:
    lo, hi = res["ci"]
    return {
        "comparison": comparison,
        "num_edits": n,
        "measure": measure,
        "diff": scale * res["value"],
        "diff_lo": scale * lo,
        "diff_hi": scale * hi,
        "significant": bool(res["significant"]),
        "mcnemar_p": p,
        "unit": unit,
        "n": res.get("n"),
    }


def _record_diffs(
    comparison: str, n: int, what: str, a: dict, b: dict, keys
) -> Iterator[dict[str, Any]]:
    common = [cid for cid in a if cid in b]
    for k in keys:
        x = np.array([a[c].get(k, np.nan) for c in common], np.float64)
        y = np.array([b[c].get(k, np.nan) for c in common], np.float64)
        ok = np.isfinite(x) & np.isfinite(y)
        if not ok.any():
            continue
        res = uncertainty.paired_difference(_mean100, [x[ok]], [y[ok]], seed=SEED)
        yield _row(comparison, n, f"{what} {k}", res, "record")


def _heldout_diffs(comparison: str, n: int, a: dict, b: dict) -> Iterator[dict[str, Any]]:
    for key, measure in (("nll", "perplexity (Δ NLL/token)"), ("kl", "KL"), ("agree", "top-1")):
        if key not in a or key not in b:
            continue
        res = heldout.paired_ratio(a, b, key, seed=SEED)
        yield _row(comparison, n, measure, res, "document")


def _downstream_diffs(comparison: str, n: int, a: dict, b: dict) -> Iterator[dict[str, Any]]:
    for task in a:
        if task not in b or a[task]["labels"] != b[task]["labels"]:
            continue
        sc = power.paired_scores(a[task]["labels"], a[task]["preds"], b[task]["preds"], seed=SEED)
        d = sc["difference"]["accuracy"]
        res = {"value": d["value"], "ci": d["ci"], "significant": d["significant"], "n": sc["n"]}
        yield _row(comparison, n, f"{task} accuracy", res, "item", sc["mcnemar"]["p"], 100.0)


def _versus_unedited(r: Run) -> list[dict]:
    rows: list[dict] = []
    name = f"{r.label} − {UNEDITED}"
    held = _heldout_points(r)
    if 0 in held:
        for n in sorted(k for k in held if k > 0):
            rows += _heldout_diffs(name, n, held[n], held[0])
    items = _downstream_items(r)
    if 0 in items:
        for n in sorted(k for k in items if k > 0):
            rows += _downstream_diffs(name, n, items[n], items[0])
    base = _baseline_records(r)
    retained = sorted(_retention_records(r).items())
    if base:
        for n, recs in retained:
            rows += _record_diffs(name, n, "retention", recs, base, ("ES", "PS"))
    if len(retained) > 1:  # decay: the first point's records again, later (same records)
        (n0, first), later = retained[0], retained[1:]
        since = f"{r.label} − itself at {n0} edits"
        for n, recs in later:
            rows += _record_diffs(since, n, "retention", recs, first, ("ES", "PS"))
    if base:
        fin = _final_records(r)
        if fin:
            rows += _record_diffs(name, r.num_edits or 0, "final", fin, base, ("ES", "PS", "NS"))
    return rows


def _versus_run(a: Run, b: Run, notes: list[str]) -> list[dict]:
    rows: list[dict] = []
    name = f"{a.label} − {b.label}"
    ha, hb = _heldout_points(a), _heldout_points(b)
    for n in sorted(set(ha) & set(hb) - {0}):
        try:
            rows += _heldout_diffs(name, n, ha[n], hb[n])
        except ValueError:
            notes.append(f"{name}: held-out documents differ, not compared")
            break
    ia, ib = _downstream_items(a), _downstream_items(b)
    for n in sorted(set(ia) & set(ib) - {0}):
        rows += _downstream_diffs(name, n, ia[n], ib[n])
    ra, rb = _retention_records(a), _retention_records(b)
    for n in sorted(set(ra) & set(rb)):
        rows += _record_diffs(name, n, "retention", ra[n], rb[n], ("ES", "PS"))
    fa, fb = _final_records(a), _final_records(b)
    if fa and fb and a.num_edits == b.num_edits:
        rows += _record_diffs(name, a.num_edits or 0, "final", fa, fb, ("ES", "PS", "NS"))
    return rows


def _diff_ci(row: dict) -> str | None:
    if _num(row.get("diff_lo")) is None:
        return None
    return f"[{row['diff_lo']:.3f}, {row['diff_hi']:.3f}]"


def paired_table(runs: list[Run]) -> Table | None:
    """Table 8: paired differences with intervals; None when no run logged per-unit values."""
    cols = [
        Column("comparison", "comparison"),
        Column("num_edits", "edits"),
        Column("measure", "measure"),
        Column("diff", "Δ", f3d),
        Column("diff_lo", "CI low", markdown=False),
        Column("diff_hi", "CI high", markdown=False),
        Column("diff_ci", "95 % CI of Δ", show=_diff_ci),
        Column("significant", "significant"),
        Column("mcnemar_p", "McNemar p", fp),
        Column("unit", "unit"),
        Column("n", "n"),
    ]
    table = Table(
        "paired",
        "8. Paired differences (every run − unedited, and between runs)",
        cols,
        caption="Δ = A − B on the same units, resampled jointly (1,000 seeded bootstrap "
        "resamples); significant when the 95 % interval excludes 0. Perplexity: Δ of mean NLL per "
        "token (exp(Δ) is the perplexity ratio); downstream accuracy and ES/PS/NS ×100; retention "
        "pools the retention samples of every batch edited so far.",
    )
    for r in runs:
        table.rows += _versus_unedited(r)
    for a, b in itertools.combinations(runs, 2):
        table.rows += _versus_run(a, b, table.notes)
    return table if table.rows else None


def statement(table: Table | None) -> str:
    """Markdown: per comparison, at its last point, which measures differ significantly."""
    if table is None or not table.rows:
        return ""
    lines = ["## 9. What is significant", ""]
    comparisons = list(dict.fromkeys(r["comparison"] for r in table.rows))
    for comp in comparisons:
        rows = [r for r in table.rows if r["comparison"] == comp]
        last = max(r["num_edits"] for r in rows)
        at: dict[str, dict] = {}  # each measure at its own last point (an unfinished run's
        for r in rows:  # measures end at different points)
            if r["measure"] not in at or r["num_edits"] > at[r["measure"]]["num_edits"]:
                at[r["measure"]] = r

        sig = [_shown(r, last) for r in at.values() if r["significant"]]
        not_sig = [_shown(r, last) for r in at.values() if not r["significant"]]
        lines.append(
            f"- **{comp}** at {last} edits — significant: "
            + ("; ".join(sig) if sig else "none")
            + ". Not significant: "
            + ("; ".join(not_sig) if not_sig else "none")
            + "."
        )
    lines.append("")
    return "\n".join(lines)


def _shown(row: dict, last: int) -> str:
    where = "" if row["num_edits"] == last else f", at {row['num_edits']} edits"
    return f"{row['measure']} ({_signed(row)}{where})"


def _signed(row: dict) -> str:
    v = row["diff"]
    if not math.isfinite(v):
        return "—"
    return f"Δ {v:+.3g} [{row['diff_lo']:+.3g}, {row['diff_hi']:+.3g}]"
