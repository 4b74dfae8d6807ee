"""Reading run directories (experiments/edit.py's outputs) and the series derived from them.

`load_run` reads one directory into a `Run` (run.json, batches.jsonl, baseline.json,
downstream.jsonl, activation.jsonl, heldout.jsonl, retention.jsonl, final.json): a missing or
malformed file becomes a note, never an error. The helpers below it pick numbers out of the
logged records for the tables and plots.
"""

from __future__ import annotations

import glob
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Run:
    path: Path
    label: str
    info: dict = field(default_factory=dict)  # run.json
    batches: list = field(default_factory=list)
    baseline: dict | None = None
    downstream: list = field(default_factory=list)
    activation: list = field(default_factory=list)
    heldout: list = field(default_factory=list)
    retention: list = field(default_factory=list)
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
    run.heldout = _read_jsonl(path / "heldout.jsonl", run.notes, label)
    run.retention = _read_jsonl(path / "retention.jsonl", run.notes, label)
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


def _unique_labels(runs: list[Run]) -> None:
    seen: dict[str, int] = {}
    for r in runs:
        seen[r.label] = seen.get(r.label, 0) + 1
    for r in runs:
        if seen[r.label] > 1:
            r.label = f"{r.label} ({r.path.name})"


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


def _activation_points(r: Run) -> list[dict]:
    pts = [
        p
        for p in r.activation
        if _num(p.get("num_edits")) is not None and isinstance(p.get("mlp_share"), list)
    ]
    return sorted(pts, key=lambda p: p["num_edits"])


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


def downstream_bands(runs: list[Run], metric: str) -> dict[str, dict[str, list[tuple]]]:
    """{run label: {task: [(num_edits, lo, hi)]}}: the 95 % intervals over items (x100) of the
    likelihood protocol's `power` scores (its F1 is f1_new's; "accuracy" is its own)."""
    key = {"f1_new": "f1", "accuracy": "accuracy"}.get(metric)
    out: dict[str, dict[str, list[tuple]]] = {}
    if key is None:
        return out
    for r in runs:
        series: dict[str, list] = {}
        for p in _downstream_points(r):
            for t, res in p["tasks"].items():
                pw = res.get("power") if isinstance(res, dict) else None
                ci = (pw.get(key) or {}).get("ci") if isinstance(pw, dict) else None
                if isinstance(ci, list) and len(ci) == 2 and all(_num(x) is not None for x in ci):
                    series.setdefault(t, []).append((p["num_edits"], 100 * ci[0], 100 * ci[1]))
        if series:
            out[r.label] = series
    return out


def accuracy_series(runs: list[Run]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{run label: {task: [(num_edits, accuracy x100)]}} of the likelihood protocol's points."""
    out = {}
    for r in runs:
        series: dict[str, list] = {}
        for p in _downstream_points(r):
            for t, res in p["tasks"].items():
                pw = res.get("power") if isinstance(res, dict) else None
                v = _num((pw.get("accuracy") or {}).get("value")) if isinstance(pw, dict) else None
                if v is not None:
                    series.setdefault(t, []).append((p["num_edits"], 100 * v))
        if series:
            out[r.label] = series
    return out


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
