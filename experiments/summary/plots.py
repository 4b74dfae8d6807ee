"""The summary plots (PNG, 900x600 px) drawn with matplotlib (Agg backend, imported lazily)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

from .runs import (
    Run,
    _activation_points,
    _num,
    _task_order,
    accuracy_series,
    downstream_bands,
    downstream_series,
    norm_series,
)
from .tables import Table

PAIRED_PANELS = 12  # the first measures of table 8, in its order

DPI = 100
FIGSIZE = (9.0, 6.0)


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


def _plot_bands(ax, bands_by_run: dict, key: str, styles: dict) -> None:
    """Shaded 95 % intervals [(x, lo, hi)] in each run's colour."""
    for lab, bands in bands_by_run.items():
        pts = bands.get(key)
        if pts and lab in styles:
            xs, lo, hi = zip(*sorted(pts))
            ax.fill_between(xs, lo, hi, color=styles[lab]["color"], alpha=0.18, linewidth=0)


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
    """Downstream `metric` ("f1", "f1_new" or "accuracy", the last from the likelihood protocol's
    per-item scores) per task and its mean over tasks; shaded: the 95 % interval over items
    where the run logged one."""
    series = accuracy_series(runs) if metric == "accuracy" else downstream_series(runs, metric)
    bands = downstream_bands(runs, metric)
    if metric == "accuracy":  # no mean over tasks: the tasks' chance levels differ
        tasks = [t for t in _task_order(runs) if any(t in s for s in series.values())]
        if not tasks:
            return False
        return _task_panels(series, bands, tasks, styles, path, metric)
    tasks = [t for t in _task_order(runs) if any(t in s for s in series.values())]
    if not tasks:
        return False
    return _task_panels(series, bands, [*tasks, "mean"], styles, path, metric)


def _task_panels(series, bands, keys, styles, path: Path, metric: str) -> bool:
    plt = _plt()
    styles = styles or _styles(series)
    fig, axes = _panels(plt, len(keys))
    for ax, key in zip(axes, keys):
        _int_x(ax)
        _plot_bands(ax, bands, key, styles)
        _plot_lines(ax, series, key, styles)
        ax.set_title(key if key != "mean" else "mean over tasks")
        ax.grid(True, alpha=0.3)
        ax.set_xlabel("edits")
        ax.set_ylabel(f"{metric} ×100")
    shaded = " (shaded: 95 % CI over test items)" if bands else ""
    _finish(fig, axes, f"Downstream {metric} ×100{shaded}")
    _save(fig, path)
    return True


def plot_heldout(runs: list[Run], path: Path, styles: dict | None = None) -> bool:
    """Held-out perplexity, KL(edited ‖ unedited) and top-1 agreement against edits, with their
    95 % intervals over documents shaded."""
    panels = [
        ("perplexity", "held-out perplexity"),
        ("kl", "KL(edited ‖ unedited) per token"),
        ("top1_agreement", "top-1 agreement with the unedited model"),
    ]
    series: dict[str, dict[str, list]] = {}
    bands: dict[str, dict[str, list]] = {}
    for r in runs:
        for p in sorted(r.heldout, key=lambda x: _num(x.get("num_edits")) or 0):
            n = int(_num(p.get("num_edits")) or 0)
            for key, _ in panels:
                v, ci = _num(p.get(key)), p.get(f"{key}_ci")
                if v is None:
                    continue
                series.setdefault(r.label, {}).setdefault(key, []).append((n, v))
                if isinstance(ci, list) and len(ci) == 2 and all(_num(x) is not None for x in ci):
                    bands.setdefault(r.label, {}).setdefault(key, []).append((n, ci[0], ci[1]))
    keys = [k for k, _ in panels if any(k in s for s in series.values())]
    if not keys:
        return False
    plt = _plt()
    styles = styles or _styles(series)
    fig, axes = _panels(plt, len(keys))
    titles = dict(panels)
    for ax, key in zip(axes, keys):
        _int_x(ax)
        _plot_bands(ax, bands, key, styles)
        _plot_lines(ax, series, key, styles)
        ax.set_title(titles[key])
        ax.grid(True, alpha=0.3)
        ax.set_xlabel("edits")
    _finish(fig, axes, "Held-out text: perplexity and drift (shaded: 95 % CI over documents)")
    _save(fig, path)
    return True


def plot_retention(runs: list[Run], path: Path, styles: dict | None = None) -> bool:
    """One panel per run: the ES of each earlier batch's records against edits (a line per
    batch, its 95 % interval over records shaded)."""
    data = {}
    for r in runs:
        curves: dict[int, list] = {}
        for point in r.retention:
            n = int(_num(point.get("num_edits")) or 0)
            for b in point.get("batches", []):
                es, ci = _num(b.get("ES")), (b.get("ci") or {}).get("ES")
                if es is None or not isinstance(b.get("batch"), int):
                    continue
                lo, hi = ci if isinstance(ci, list) and len(ci) == 2 else (es, es)
                curves.setdefault(b["batch"], []).append((n, es, lo, hi))
        if curves:
            data[r.label] = curves
    if not data:
        return False
    plt = _plt()
    fig, axes = _panels(plt, len(data))
    cmap = plt.get_cmap("viridis")
    for ax, (lab, curves) in zip(axes, data.items()):
        _int_x(ax)
        nb = max(curves) + 1
        for b, pts in sorted(curves.items()):
            pts.sort()
            xs, es, lo, hi = zip(*pts)
            color = cmap(b / max(nb - 1, 1))
            ax.fill_between(xs, lo, hi, color=color, alpha=0.08, linewidth=0)
            ax.plot(xs, es, color=color, marker="o", label=f"batch {b + 1}" if nb <= 12 else None)
        ax.set_title(lab)
        ax.set_ylim(-2, 102)
        ax.grid(True, alpha=0.3)
        ax.set_xlabel("edits")
        ax.set_ylabel("ES of the batch's records")
    _finish(fig, axes, "Retention of earlier edits (shaded: 95 % CI over records)")
    _save(fig, path)
    return True


def plot_editing(table: Table, path: Path, styles: dict | None = None) -> bool:
    """ES/PS/NS/S of every row of the editing table as bars with their 95 % intervals."""
    metrics = ["ES", "PS", "NS", "S"]
    rows = [r for r in table.rows if any(_num(r.get(m)) is not None for m in metrics)]
    if not rows or not any(_num(r.get(f"{m}_lo")) is not None for r in rows for m in metrics):
        return False  # no intervals logged: the table says it all
    plt = _plt()
    labels = [r["run"] for r in rows]
    styles = styles or _styles(labels)
    fig, ax = plt.subplots(figsize=FIGSIZE)
    width = 0.8 / len(rows)
    for i, r in enumerate(rows):
        xs = [k + (i - (len(rows) - 1) / 2) * width for k in range(len(metrics))]
        vals = [_num(r.get(m)) or 0.0 for m in metrics]
        err = [
            [max(v - (_num(r.get(f"{m}_lo")) or v), 0) for v, m in zip(vals, metrics)],
            [max((_num(r.get(f"{m}_hi")) or v) - v, 0) for v, m in zip(vals, metrics)],
        ]
        color = "0.6" if r["run"] == "unedited" else styles.get(r["run"], {}).get("color")
        ax.bar(xs, vals, width, yerr=err, capsize=3, color=color, label=r["run"])
    ax.set_xticks(range(len(metrics)))
    ax.set_xticklabels(metrics)
    ax.set_ylim(0, 105)
    ax.set_ylabel("score ×100")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="lower right", frameon=False)
    ax.set_title("CounterFact editing metrics after the last batch (bars: 95 % CI over records)")
    fig.tight_layout()
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


def plot_paired(table: Table | None, path: Path, styles: dict | None = None) -> bool:
    """Table 8 as curves: each measure's paired difference (A − B) against edits, one line per
    comparison with its 95 % interval shaded and the zero line drawn; a point whose interval
    excludes 0 is filled, one that does not is hollow."""
    if table is None or not table.rows:
        return False
    measures = list(dict.fromkeys(r["measure"] for r in table.rows if r["num_edits"]))
    measures = [m for m in measures if not m.startswith("final")][:PAIRED_PANELS]
    if not measures:
        return False
    comparisons = list(dict.fromkeys(r["comparison"] for r in table.rows))
    plt = _plt()
    styles = _styles(comparisons)
    fig, axes = _panels(plt, len(measures))
    for ax, m in zip(axes, measures):
        _int_x(ax)
        ax.axhline(0.0, color="0.3", linewidth=0.8)
        for comp in comparisons:
            pts = sorted(
                (r["num_edits"], r["diff"], r["diff_lo"], r["diff_hi"], r["significant"])
                for r in table.rows
                if r["comparison"] == comp and r["measure"] == m
            )
            if not pts:
                continue
            xs, ys, lo, hi, sig = zip(*pts)
            st = styles[comp]
            ax.fill_between(xs, lo, hi, color=st["color"], alpha=0.18, linewidth=0)
            ax.vlines(xs, lo, hi, color=st["color"], linewidth=1.0, alpha=0.6)
            ax.plot(xs, ys, color=st["color"], label=comp)
            for x, y, g in zip(xs, ys, sig):
                ax.plot(
                    [x],
                    [y],
                    st["marker"],
                    color=st["color"],
                    markerfacecolor=st["color"] if g else "white",
                    markersize=5,
                )
        ax.set_title(m)
        ax.grid(True, alpha=0.3)
        ax.set_xlabel("edits")
        ax.set_ylabel("Δ")
    _finish(fig, axes, "Paired differences (shaded: 95 % CI; filled: significant)")
    _save(fig, path)
    return True
