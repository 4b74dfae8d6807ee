"""`summarize`: every table and plot of a set of run directories, written to one folder."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from .paired import paired_table, statement
from .plots import (
    _styles,
    plot_activation,
    plot_downstream,
    plot_editing,
    plot_heldout,
    plot_mpes,
    plot_norm_growth,
    plot_paired,
    plot_retention,
)
from .runs import (
    Run,
    _shown,
    _unique_labels,
    downstream_series,
    expand_runs,
    load_run,
    norm_series,
)
from .tables import (
    _cell,
    activation_table,
    downstream_power_table,
    downstream_table,
    editing_table,
    heldout_table,
    mpes_table,
    norms_table,
    retention_table,
)


def _named(tables, name: str):
    return next((t for t in tables if t.name == name), None)


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
        except Exception as err:
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
    extras = (
        downstream_power_table(loaded),
        activation_table(loaded),
        heldout_table(loaded),
        retention_table(loaded),
        paired_table(loaded),
    )
    for extra in extras:
        if extra is not None:
            tables.append(extra)
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
            ("downstream_accuracy.png", lambda p: plot_downstream(loaded, "accuracy", p, styles)),
            ("editing.png", lambda p: plot_editing(tables[0], p, styles)),
            ("heldout.png", lambda p: plot_heldout(loaded, p, styles)),
            ("retention.png", lambda p: plot_retention(loaded, p, styles)),
            ("paired.png", lambda p: plot_paired(_named(tables, "paired"), p)),
        ]
        for name, job in plot_jobs:
            try:
                if job(out / name):
                    files.append(name)
            except Exception as err:
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
    paired = _named(tables, "paired")
    if paired is not None:
        md.append(statement(paired))
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
