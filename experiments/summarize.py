"""Tables and plots from sequential-editing run directories (written by experiments/edit.py).

    python experiments/summarize.py --runs='runs/*' --out=experiments/results/summary
    python experiments/summarize.py --runs=runs/encore,runs/memit_seq \
        --labels=ENCORE,MEMIT-seq --out=out

`--runs` is a comma-separated list of run directories, each of which may be a glob. Writes to
`--out`:

- `summary.md`: all tables (also printed to stdout), with a note under a table for every run or
  file that was skipped (unfinished runs are reported, never fatal);
- one CSV per table: `editing.csv`, `mpes.csv`, `downstream_f1.csv`, `downstream_f1_new.csv`,
  `norms.csv`, `activation.csv` (full-precision values);
- `summary.json`: every table's rows (raw values), the plotted series, the notes and the runs;
- plots (900x600 px): `norm_growth.png`, `downstream.png`, `downstream_f1_new.png`,
  `activation_share.png`, `mpes.png` (each only when there is data for it).

Tables:
1. editing metrics (ENCORE Table 3): CounterFact ES/PS/NS/S/GE (+ `_acc` variants) after the
   last batch, plus an "unedited" row (the first finished run's `before` scores);
2. MPES (ENCORE Table 1): MPES on/off, norm constraint lambda_n, mean edited-fact probability at
   the search's stop, mean search steps, search and total time per edit, and the mean per-edit
   time of batches 2..N (batch 1 includes compilation);
3. downstream f1 (and the likelihood-based f1_new) x100 per task and their mean, per evaluation
   point;
4. norms: ||W||_F of every edited layer before (baseline.json) and after the last batch, the
   growth factor and ||W - W0||_F, plus the maximum over all layers;
5. MLP activation share of the edited layers at the first and last evaluation points.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

MAIN_METRICS = ("ES", "PS", "NS", "S", "GE")
DPI = 100
FIGSIZE = (9.0, 6.0)


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


@dataclass
class Run:
    path: Path
    label: str
    info: dict = field(default_factory=dict)  # run.json
    batches: list = field(default_factory=list)
    baseline: dict | None = None
    downstream: list = field(default_factory=list)
    activation: list = field(default_factory=list)
    final: dict | None = None
    notes: list = field(default_factory=list)

    @property
    def config(self) -> dict:
        cfg = self.info.get("config")
        return cfg if isinstance(cfg, dict) else {}

    @property
    def method(self) -> str:
        return str(self.config.get("method", "")) or "?"

    @property
    def num_edits(self) -> int | None:
        if self.final and isinstance(self.final.get("num_edits"), (int, float)):
            return int(self.final["num_edits"])
        if self.batches:
            n = self.batches[-1].get("num_edits")
            return int(n) if isinstance(n, (int, float)) else None
        return None

    @property
    def layers(self) -> list[int]:
        layers = self.config.get("layers")
        if isinstance(layers, (list, tuple)) and layers:
            try:
                return [int(x) for x in layers]
            except (TypeError, ValueError):
                pass
        for b in self.batches:
            for key in ("weight_norm", "delta_norm", "distance_from_original"):
                if isinstance(b.get(key), dict) and b[key]:
                    return sorted(int(k) for k in b[key] if str(k).lstrip("-").isdigit())
        return []

    @property
    def baseline_layer_norms(self) -> list | None:
        norms = (self.baseline or {}).get("layer_norms")
        return norms if isinstance(norms, list) and norms else None


def _read_json(path: Path, notes: list, label: str) -> dict | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        notes.append(f"{label}: {path.name} is unreadable ({err.__class__.__name__}); ignored")
        return None
    if not isinstance(data, dict):
        notes.append(f"{label}: {path.name} is not a JSON object; ignored")
        return None
    return data


def _read_jsonl(path: Path, notes: list, label: str) -> list[dict]:
    if not path.exists():
        return []
    rows, bad = [], 0
    try:
        text = path.read_text()
    except OSError as err:
        notes.append(f"{label}: {path.name} is unreadable ({err.__class__.__name__}); ignored")
        return []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(obj, dict):
            rows.append(obj)
        else:
            bad += 1
    if bad:
        notes.append(f"{label}: skipped {bad} malformed line(s) of {path.name}")
    return rows


def _shown(path: Path) -> str:
    """A run directory as written in the outputs: relative to the working directory, so that
    committed summaries carry no machine-specific absolute paths."""
    try:
        return os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return str(path)


def load_run(path: str | Path, label: str | None = None) -> Run:
    path = Path(path)
    notes: list[str] = []
    name = path.name or str(path)
    info = _read_json(path / "run.json", notes, name)
    if info is None:
        if not (path / "run.json").exists():
            notes.append(f"{name}: no run.json (config unknown)")
        info = {}
    label = label or (info.get("label") if isinstance(info.get("label"), str) else None) or name
    run = Run(path=path, label=label, info=info, notes=notes)
    run.notes = [
        n.replace(f"{name}:", f"{label}:", 1) if n.startswith(f"{name}:") else n for n in notes
    ]
    run.batches = _read_jsonl(path / "batches.jsonl", run.notes, label)
    run.baseline = _read_json(path / "baseline.json", run.notes, label)
    run.downstream = _read_jsonl(path / "downstream.jsonl", run.notes, label)
    run.activation = _read_jsonl(path / "activation.jsonl", run.notes, label)
    run.final = _read_json(path / "final.json", run.notes, label)
    if not run.batches:
        run.notes.append(f"{label}: no batches logged (batches.jsonl missing or empty)")
    expected = info.get("num_requests")
    if run.final is None:
        got = run.num_edits or 0
        extra = f" of {expected}" if isinstance(expected, int) else ""
        run.notes.append(
            f"{label}: no final.json (unfinished run?): {len(run.batches)} batch(es), "
            f"{got}{extra} edits logged"
        )
    return run


def expand_runs(spec: str | Sequence[str]) -> list[str]:
    """Comma-separated directories or globs (or a list of them) -> paths, in order."""
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for part in (str(p).strip() for p in parts):
        if not part:
            continue
        matches = sorted(glob.glob(part)) if glob.has_magic(part) else [part]
        for m in matches:
            if m not in out:
                out.append(m)
    return out


# --------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------


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


def _num(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return None if math.isnan(v) else v


def _mean(values: Iterable) -> float | None:
    vals = [x for x in (_num(v) for v in values) if x is not None]
    return sum(vals) / len(vals) if vals else None


def _flat(batches: list, key: str) -> list:
    out = []
    for b in batches:
        v = b.get(key)
        if isinstance(v, list):
            out += v
    return out


def _batch_sizes(batches: list) -> list[int | None]:
    """Edits in each batch: len(case_ids), else the difference of cumulative num_edits."""
    sizes, prev = [], 0
    for b in batches:
        n = b.get("num_edits")
        if isinstance(b.get("case_ids"), list):
            sizes.append(len(b["case_ids"]))
        elif isinstance(n, (int, float)):
            sizes.append(int(n) - prev)
        else:
            sizes.append(None)
        if isinstance(n, (int, float)):
            prev = int(n)
    return sizes


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
    table = Table(
        "mpes",
        "2. MPES: search stop, probability and time",
        cols,
        caption="Probability of the new target at the search's stop and search steps are means "
        "over all requests; times per edit are Σ time / Σ edits; the last column is the mean "
        "per-edit time of batches 2..N (batch 1 includes compilation).",
    )
    for r in runs:
        if not r.batches:
            table.notes.append(f"{r.label}: no batches.jsonl lines, skipped")
            continue
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


def _downstream_points(r: Run) -> list[dict]:
    """Evaluation points by num_edits; baseline.json's downstream stands in for a missing 0."""
    points: dict[int, dict] = {}
    for p in r.downstream:
        n = _num(p.get("num_edits"))
        if n is None or not isinstance(p.get("tasks"), dict):
            continue
        points[int(n)] = p["tasks"]
    base = (r.baseline or {}).get("downstream")
    if 0 not in points and isinstance(base, dict) and base:
        points[0] = base
    return [{"num_edits": n, "tasks": points[n]} for n in sorted(points)]


def _task_order(runs: list[Run]) -> list[str]:
    tasks: list[str] = []
    for r in runs:
        ds = r.info.get("downstream") if isinstance(r.info.get("downstream"), dict) else {}
        for t in ds.get("tasks") or []:
            if t not in tasks:
                tasks.append(t)
    for r in runs:
        for p in _downstream_points(r):
            for t in p["tasks"]:
                if t not in tasks:
                    tasks.append(t)
    return tasks


def downstream_series(
    runs: list[Run], metric: str
) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{run label: {task or "mean": [(num_edits, metric x100)]}}."""
    out = {}
    for r in runs:
        series: dict[str, list] = {}
        for p in _downstream_points(r):
            vals = []
            for t, res in p["tasks"].items():
                v = _num(res.get(metric)) if isinstance(res, dict) else None
                if v is not None:
                    series.setdefault(t, []).append((p["num_edits"], 100 * v))
                    vals.append(100 * v)
            if vals:
                series.setdefault("mean", []).append((p["num_edits"], sum(vals) / len(vals)))
        out[r.label] = series
    return out


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


def _layer_value(batch: dict, key: str, layer: int) -> float | None:
    d = batch.get(key)
    if isinstance(d, dict):
        return _num(d.get(str(layer), d.get(layer)))
    return None


def _layer_norm_at(batch: dict, layer: int) -> float | None:
    v = _layer_value(batch, "weight_norm", layer)
    if v is None:
        norms = batch.get("layer_norms")
        if isinstance(norms, list) and 0 <= layer < len(norms):
            v = _num(norms[layer])
    return v


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
        "norms",
        "4. Weight norms of the MLP output matrices",
        cols,
        caption="‖W‖_F of each edited layer on the unedited model (baseline.json) and after "
        "the last logged batch, their ratio, and ‖W−W₀‖_F after the last batch; `max` is "
        "the largest ‖W_out‖_F over all layers.",
    )
    for r in runs:
        if not r.batches:
            table.notes.append(f"{r.label}: no batches, skipped")
            continue
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


def _activation_points(r: Run) -> list[dict]:
    pts = [
        p
        for p in r.activation
        if _num(p.get("num_edits")) is not None and isinstance(p.get("mlp_share"), list)
    ]
    return sorted(pts, key=lambda p: p["num_edits"])


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


# --------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "font.size": 8,
            "axes.titlesize": 9,
            "legend.fontsize": 8,
            "lines.linewidth": 1.4,
            "lines.markersize": 3,
        }
    )
    return plt


def _save(fig, path: Path) -> None:
    fig.savefig(path, dpi=DPI, pil_kwargs={"optimize": True})
    import matplotlib.pyplot as plt

    plt.close(fig)


def _grid(n: int) -> tuple[int, int]:
    cols = n if n <= 3 else 2 if n == 4 else 3 if n in (5, 6, 9) else 4
    return math.ceil(n / cols), max(cols, 1)


def _styles(labels: Iterable[str]) -> dict[str, dict]:
    """One colour and marker per run, fixed by the run's position so that every plot agrees."""
    colors = [
        "#1f77b4",
        "#d62728",
        "#2ca02c",
        "#ff7f0e",
        "#9467bd",
        "#8c564b",
        "#e377c2",
        "#17becf",
        "#7f7f7f",
        "#bcbd22",
    ]
    markers = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">"]
    return {
        lab: {"color": colors[i % len(colors)], "marker": markers[i % len(markers)]}
        for i, lab in enumerate(list(labels))
    }


def _int_x(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True, steps=[1, 2, 2.5, 5, 10]))


def _panels(plt, n: int):
    rows, cols = _grid(n)
    fig, axes = plt.subplots(rows, cols, figsize=FIGSIZE, squeeze=False)
    flat = axes.ravel().tolist()
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _finish(fig, axes, title: str) -> None:
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.suptitle(title, fontsize=10)
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), frameon=False)
    bottom = 0.06 + 0.035 * math.ceil(len(labels) / 5) if handles else 0.04
    fig.tight_layout(rect=(0, bottom, 1, 0.96))


def norm_series(runs: list[Run]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{run: {"L4"... or "max": [(num_edits, ||W||_F)]}}, with 0 edits from baseline.json."""
    out = {}
    for r in runs:
        base = r.baseline_layer_norms
        series: dict[str, list] = {}
        for layer in r.layers:
            pts = []
            if base and 0 <= layer < len(base) and _num(base[layer]) is not None:
                pts.append((0, float(base[layer])))
            for b in r.batches:
                v, n = _layer_norm_at(b, layer), _num(b.get("num_edits"))
                if v is not None and n is not None:
                    pts.append((int(n), v))
            if pts:
                series[f"L{layer}"] = pts
        mx = []
        if base and any(_num(x) is not None for x in base):
            mx.append((0, max(x for x in map(_num, base) if x is not None)))
        for b in r.batches:
            vals = [x for x in map(_num, b.get("layer_norms") or []) if x is not None]
            n = _num(b.get("num_edits"))
            if vals and n is not None:
                mx.append((int(n), max(vals)))
        if len(mx) > 1 or (mx and mx[0][0] != 0):
            series["max"] = mx
        out[r.label] = series
    return out


def _plot_lines(ax, series_by_run: dict, key: str, styles: dict) -> list[float]:
    ys = []
    for lab, series in series_by_run.items():
        pts = series.get(key)
        if not pts:
            continue
        xs, vs = zip(*pts)
        ax.plot(xs, vs, label=lab, **styles[lab])
        ys += list(vs)
    return ys


def plot_norm_growth(runs: list[Run], path: Path, styles: dict | None = None) -> bool:
    series = norm_series(runs)
    keys = []
    for lab in series:
        for k in series[lab]:
            if k not in keys and k != "max":
                keys.append(k)
    keys.sort(key=lambda k: int(k[1:]))
    if any("max" in s for s in series.values()):
        keys.append("max")
    if not keys:
        return False
    plt = _plt()
    styles = styles or _styles(series)
    fig, axes = _panels(plt, len(keys))
    for ax, key in zip(axes, keys):
        _int_x(ax)
        ys = _plot_lines(ax, series, key, styles)
        positive = [y for y in ys if y > 0]
        if positive and max(positive) / min(positive) > 10:
            ax.set_yscale("log")
        ax.set_title(f"layer {key[1:]}" if key != "max" else "max over all layers")
        ax.grid(True, alpha=0.3)
        ax.set_xlabel("edits")
        ax.set_ylabel("‖W_out‖_F")
    _finish(fig, axes, "Norm of the edited MLP output matrices")
    _save(fig, path)
    return True


def plot_downstream(runs: list[Run], metric: str, path: Path, styles: dict | None = None) -> bool:
    series = downstream_series(runs, metric)
    tasks = [t for t in _task_order(runs) if any(t in s for s in series.values())]
    if not tasks:
        return False
    keys = tasks + ["mean"]
    plt = _plt()
    styles = styles or _styles(series)
    fig, axes = _panels(plt, len(keys))
    for ax, key in zip(axes, keys):
        _int_x(ax)
        _plot_lines(ax, series, key, styles)
        ax.set_title(key if key != "mean" else "mean over tasks")
        ax.grid(True, alpha=0.3)
        ax.set_xlabel("edits")
        ax.set_ylabel(f"{metric} ×100")
    _finish(fig, axes, f"Downstream {metric} ×100")
    _save(fig, path)
    return True


def plot_activation(runs: list[Run], path: Path, styles: dict | None = None) -> bool:
    data = {r.label: _activation_points(r) for r in runs}
    data = {k: v for k, v in data.items() if v}
    if not data:
        return False
    plt = _plt()
    styles = styles or _styles(data)
    fig, ax = plt.subplots(figsize=FIGSIZE)
    _int_x(ax)
    baseline = None
    for lab, pts in data.items():
        if baseline is None and pts[0]["num_edits"] == 0:
            baseline = pts[0]["mlp_share"]
        last = pts[-1]
        share = [_num(x) for x in last["mlp_share"]]
        xs = [i for i, v in enumerate(share) if v is not None]
        ax.plot(
            xs,
            [share[i] for i in xs],
            label=f"{lab} ({int(last['num_edits'])} edits)",
            **styles[lab],
        )
    if baseline is not None:
        xs = [i for i, v in enumerate(baseline) if _num(v) is not None]
        ax.plot(xs, [baseline[i] for i in xs], "k--", label="unedited", linewidth=1.2)
    edited = sorted({layer for r in runs for layer in r.layers})
    if edited:
        ax.axvspan(
            min(edited) - 0.5, max(edited) + 0.5, color="0.85", alpha=0.5, label="edited layers"
        )
    ax.set_xlabel("layer")
    ax.set_ylabel("MLP share")
    ax.grid(True, alpha=0.3)
    ax.set_title("MLP activation share at the last evaluation point")
    ax.legend(loc="best", frameon=False)
    fig.tight_layout()
    _save(fig, path)
    return True


def plot_mpes(table: Table, path: Path, styles: dict | None = None) -> bool:
    rows = [
        r
        for r in table.rows
        if r.get("mean_steps") is not None or r.get("mean_target_prob") is not None
    ]
    if not rows:
        return False
    plt = _plt()
    labels = [r["run"] for r in rows]
    styles = styles or _styles(labels)
    fig, axes = plt.subplots(1, 2, figsize=FIGSIZE)
    for ax, key, ylabel in (
        (axes[0], "mean_steps", "mean search steps"),
        (axes[1], "mean_target_prob", "edited-fact probability at stop"),
    ):
        vals = [r.get(key) if r.get(key) is not None else 0.0 for r in rows]
        bars = ax.bar(range(len(rows)), vals, color=[styles[lab]["color"] for lab in labels])
        for b, r in zip(bars, rows):
            v = r.get(key)
            ax.annotate(
                "—" if v is None else (f"{v:.1f}" if key == "mean_steps" else f"{v:.3f}"),
                (b.get_x() + b.get_width() / 2, b.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(labels, rotation=20, ha="right")
        ax.set_ylabel(ylabel)
        ax.grid(True, axis="y", alpha=0.3)
        if key == "mean_target_prob":
            ax.set_ylim(0, 1.05)
    fig.suptitle("Target-activation search: steps and edited-fact probability", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    _save(fig, path)
    return True


# --------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------


def _unique_labels(runs: list[Run]) -> None:
    seen: dict[str, int] = {}
    for r in runs:
        seen[r.label] = seen.get(r.label, 0) + 1
    for r in runs:
        if seen[r.label] > 1:
            r.label = f"{r.label} ({r.path.name})"


def summarize(
    runs: str | Sequence[str],
    out: str | Path,
    labels: str | Sequence[str] | None = None,
    plots: bool = True,
) -> dict:
    """Read the run directories, write summary.md/.json, the CSVs and the plots to `out`.

    Returns {"markdown", "tables": {name: Table}, "notes", "files", "runs"}.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = expand_runs(runs)
    if isinstance(labels, str):
        labels = [x.strip() for x in labels.split(",")] if labels.strip() else None
    labels = list(labels) if labels else []
    notes: list[str] = []
    if labels and len(labels) != len(paths):
        notes.append(
            f"{len(labels)} label(s) for {len(paths)} run(s); the extra ones are ignored, "
            "missing ones use run.json/directory names"
        )
    loaded: list[Run] = []
    for i, p in enumerate(paths):
        if not Path(p).is_dir():
            notes.append(f"{p}: not a directory, skipped")
            continue
        lab = labels[i] if i < len(labels) and labels[i] else None
        try:
            loaded.append(load_run(p, lab))
        except Exception as err:  # noqa: BLE001 - a broken run must not stop the summary
            notes.append(f"{p}: could not be read ({err.__class__.__name__}: {err}), skipped")
    _unique_labels(loaded)
    for r in loaded:
        notes += r.notes

    tables = [
        editing_table(loaded),
        mpes_table(loaded),
        downstream_table(loaded, "f1", "3a"),
        downstream_table(loaded, "f1_new", "3b"),
        norms_table(loaded),
    ]
    act = activation_table(loaded)
    if act is not None:
        tables.append(act)
    # Downstream f1_new is often absent when f1 is: drop an empty f1_new table silently.
    tables = [t for t in tables if t.rows or t.name != "downstream_f1_new"]

    files: list[str] = []
    if plots:
        styles = _styles(r.label for r in loaded)
        plot_jobs = [
            ("norm_growth.png", lambda p: plot_norm_growth(loaded, p, styles)),
            ("downstream.png", lambda p: plot_downstream(loaded, "f1", p, styles)),
            ("downstream_f1_new.png", lambda p: plot_downstream(loaded, "f1_new", p, styles)),
            ("activation_share.png", lambda p: plot_activation(loaded, p, styles)),
            ("mpes.png", lambda p: plot_mpes(tables[1], p, styles)),
        ]
        for name, job in plot_jobs:
            try:
                if job(out / name):
                    files.append(name)
            except Exception as err:  # noqa: BLE001 - a plot failure must not lose the tables
                notes.append(f"plot {name} failed: {err.__class__.__name__}: {err}")

    md = ["# Sequential editing summary", ""]
    md.append("| run | method | model | edits | batches | directory |")
    md.append("|---|---|---|---:|---:|---|")
    for r in loaded:
        status = "" if r.final is not None else " (unfinished)"
        md.append(
            f"| {r.label} | {r.method} | {r.info.get('model', '—')} | "
            f"{_cell(r.num_edits, None)}{status} | {len(r.batches)} | `{_shown(r.path)}` |"
        )
    if not loaded:
        md.append("_(no runs)_")
    md.append("")
    for t in tables:
        md.append(t.markdown())
    if files:
        md.append("## Plots\n")
        md += [f"![{f}]({f})" for f in files]
        md.append("")
    if notes:
        md.append("## Notes\n")
        md += [f"- {n}" for n in notes]
        md.append("")
    markdown = "\n".join(md)

    (out / "summary.md").write_text(markdown)
    for t in tables:
        (out / f"{t.name}.csv").write_text(t.csv_text())
    data = {
        "runs": [
            {
                "label": r.label,
                "path": _shown(r.path),
                "method": r.method,
                "num_edits": r.num_edits,
                "num_batches": len(r.batches),
                "finished": r.final is not None,
                "notes": r.notes,
            }
            for r in loaded
        ],
        "tables": {t.name: t.to_json() for t in tables},
        "series": {
            "norms": norm_series(loaded),
            "downstream_f1": downstream_series(loaded, "f1"),
            "downstream_f1_new": downstream_series(loaded, "f1_new"),
        },
        "notes": notes,
        "plots": files,
    }
    (out / "summary.json").write_text(json.dumps(data, indent=1, default=str))
    files = ["summary.md", "summary.json"] + [f"{t.name}.csv" for t in tables] + files
    return {
        "markdown": markdown,
        "tables": {t.name: t for t in tables},
        "notes": notes,
        "files": files,
        "runs": loaded,
    }


def _define_flags():
    from absl import flags

    flags.DEFINE_string(
        "runs", None, "Comma-separated run directories (each may be a glob).", required=True
    )
    flags.DEFINE_string("out", None, "Output directory.", required=True)
    flags.DEFINE_string(
        "labels",
        None,
        "Comma-separated display names (default: run.json label or the directory name).",
    )
    flags.DEFINE_bool("plots", True, "Write the PNG plots.")
    return flags.FLAGS


def main(argv) -> None:
    from absl import app, flags

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    FLAGS = flags.FLAGS
    result = summarize(FLAGS.runs, FLAGS.out, FLAGS.labels, plots=FLAGS.plots)
    sys.stdout.write(result["markdown"])
    sys.stdout.flush()
    print(f"\nwrote {', '.join(result['files'])} to {os.path.abspath(FLAGS.out)}", file=sys.stderr)


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
