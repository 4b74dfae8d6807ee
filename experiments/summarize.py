r"""Tables and plots from sequential-editing run directories (written by experiments/edit.py).

    python experiments/summarize.py --runs='runs/*' --out=experiments/results/summary
    python experiments/summarize.py --runs=runs/encore,runs/memit_seq \
        --labels=ENCORE,MEMIT-seq --out=out

`--runs` is a comma-separated list of run directories, each of which may be a glob. The work is
done by the `summary` package beside this file (`runs`: reading, `tables`, `plots`, `report`:
`summarize`). Writes to `--out`:

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

import os
import sys
from pathlib import Path

from summary import summarize
from summary.runs import expand_runs

# What makes a directory a run directory of experiments/edit.py (an unfinished run has run.json).
RUN_FILES = ("run.json", "batches.jsonl", "final.json")


def check_runs(runs: str, out: str) -> None:
    """Refuses (before anything is written) a --runs that names no run directory at all and an
    --out that is a file; a set with some unfinished or unreadable runs is summarized with notes."""
    import cli  # experiments/cli.py: the user-error rule

    paths = expand_runs(runs)
    if not paths:
        raise cli.UserError(
            f"--runs={runs!r} matches no directory (fix: pass run directories of "
            "experiments/edit.py, comma-separated, globs allowed: --runs='runs/*')"
        )
    found = [p for p in paths if any((Path(p) / n).is_file() for n in RUN_FILES)]
    if not found:
        shown = ", ".join(paths[:5]) + (" ..." if len(paths) > 5 else "")
        raise cli.UserError(
            f"--runs={runs!r}: no run directory among {shown} (none holds run.json or "
            "batches.jsonl) (fix: pass the --workdir folders of experiments/edit.py runs)"
        )
    if Path(out).exists() and not Path(out).is_dir():
        raise cli.UserError(f"--out={out} is a file (fix: pass a directory path)")


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
    import console  # experiments/console.py: --help sections

    global __doc__
    __doc__ = console.help_sections(
        __doc__, [("run directories", ["runs", "labels"]), ("output", ["out", "plots"])]
    )
    return flags.FLAGS


def main(argv) -> None:
    from absl import app, flags

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    FLAGS = flags.FLAGS
    check_runs(FLAGS.runs, FLAGS.out)
    result = summarize(FLAGS.runs, FLAGS.out, FLAGS.labels, plots=FLAGS.plots)
    sys.stdout.write(result["markdown"])
    sys.stdout.flush()
    print(f"\nwrote {', '.join(result['files'])} to {os.path.abspath(FLAGS.out)}", file=sys.stderr)


if __name__ == "__main__":
    import cli  # experiments/cli.py: the user-error rule (imported here: it loads jaxedit)

    _define_flags()
    cli.run(main)
