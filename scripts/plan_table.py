"""The WORKSPACE table of memory plans: per model and mesh, each method's accelerator peak per
device and the named hardware it fits, from experiments/results/memory_plan/*.json.

    python scripts/plan_table.py experiments/results/memory_plan/*.json
"""

import json
import sys
from pathlib import Path

SHORT = {
    "TPU v2-8": "v2-8",
    "TPU v3-8": "v3-8",
    "TPU v5e-1": "v5e-1",
    "TPU v5e-4": "v5e-4",
    "TPU v5e-8": "v5e-8",
    "A100-40": "A100-40",
    "A100-80": "A100-80",
    "H100-80": "H100-80",
    "H200-141": "H200",
}


def main(paths: list[str]) -> None:
    plans = []
    for p in paths:
        data = json.loads(Path(p).read_text())
        plans += data.get("plans", [data])
    methods = list(dict.fromkeys(p["method"] for p in plans))
    print("| model | mesh (data×model) | searched at once | " + " | ".join(methods) + " |")
    print("|---" * (3 + len(methods)) + "|")
    rows: dict = {}
    for p in plans:
        key = (p["model"], "×".join(str(v) for v in p["mesh"].values()), p["search_requests"])
        rows.setdefault(key, {})[p["method"]] = p
    for (model, mesh, searched), by_method in rows.items():
        cells = []
        for m in methods:
            p = by_method.get(m)
            if p is None:
                cells.append("–")
                continue
            fits = [SHORT[h] for h, ok in p["fits"].items() if ok]
            peak = p["accelerator_peak_bytes"] / 1e9
            cells.append(
                f"{peak:.1f} GB ({p['accelerator_peak_stage']}): {', '.join(fits) or 'none'}"
            )
        print(f"| {model} | {mesh} | {searched} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
