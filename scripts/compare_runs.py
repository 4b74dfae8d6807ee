"""Compares two edit.py run directories of the same edits (fp32 vs bf16 weights, one device vs a
mesh): stop steps, final ES/PS/NS/S (when evaluated), target probabilities, edited-layer norms,
time per edit, and the edited kernels of the two newest checkpoints (relative Frobenius
difference per layer).

    python scripts/compare_runs.py RUN_A RUN_B
"""

import json
import sys
from pathlib import Path


def load(run: Path) -> tuple[list[dict], dict]:
    batches = [json.loads(line) for line in (run / "batches.jsonl").read_text().splitlines()]
    return batches, json.loads((run / "final.json").read_text())


def kernel_difference(a: Path, b: Path) -> dict[str, float]:
    """‖W_a − W_b‖_F / ‖W_a‖_F per edited kernel of the newest checkpoint steps."""
    import numpy as np

    from jaxedit import checkpoint

    (_, xa, _), (_, xb, _) = (
        checkpoint.restore(a / "checkpoint"),
        checkpoint.restore(b / "checkpoint"),
    )
    out = {}
    for k in sorted(x for x in xa if x.startswith("kernel")):
        wa, wb = (np.asarray(x[k], np.float64) for x in (xa, xb))
        out[k] = float(np.linalg.norm(wa - wb) / np.linalg.norm(wa))
    return out


def per_edit(batches: list[dict], skip: int = 0) -> float:
    rows = batches[skip:]
    return sum(b["search_time_s"] + b["update_time_s"] for b in rows) / sum(
        len(b["stop_steps"]) for b in rows
    )


def main(a: Path, b: Path) -> None:
    (ba, fa), (bb, fb) = load(a), load(b)
    sa = [s for x in ba for s in x["stop_steps"]]
    sb = [s for x in bb for s in x["stop_steps"]]
    n = len(sa)
    equal = sum(x == y for x, y in zip(sa, sb))
    close = sum(abs(x - y) <= 1 for x, y in zip(sa, sb))
    print(
        f"stop steps: equal {equal}/{n}, within one {close}/{n}; mean {sum(sa) / n:.2f} vs "
        f"{sum(sb) / n:.2f}"
    )
    for k in ("ES", "PS", "NS", "S") if "after" in fa and "after" in fb else ():
        print(
            f"{k}: after {fa['after'][k]:.1f} vs {fb['after'][k]:.1f}; unedited "
            f"{fa['before'][k]:.1f} vs {fb['before'][k]:.1f}"
        )
    pa = [p for x in ba for p in x["target_prob"]]
    pb = [p for x in bb for p in x["target_prob"]]
    print(f"mean target probability {sum(pa) / n:.3f} vs {sum(pb) / n:.3f}")
    wa, wb = ba[-1]["weight_norm"], bb[-1]["weight_norm"]
    print(
        "edited-layer norms",
        [round(wa[k], 2) for k in sorted(wa)],
        "vs",
        [round(wb[k], 2) for k in sorted(wb)],
    )
    print(
        f"s/edit {per_edit(ba):.2f} vs {per_edit(bb):.2f} (without batch 1: "
        f"{per_edit(ba, 1):.2f} vs {per_edit(bb, 1):.2f})"
    )
    diff = kernel_difference(a, b)
    print("edited kernels, relative difference:", {k: f"{v:.2e}" for k, v in diff.items()})
    print(f"max relative kernel difference {max(diff.values()):.2e}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
