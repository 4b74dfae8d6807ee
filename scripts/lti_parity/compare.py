"""Compares jaxedit's official-mode LTI targets (WORK/jaxedit_dump/batch_000.npz) with the official
code's (WORK/official_z.npz), and both with a float64 run of the official code where
WORK/official_z_f64.npz exists. Prints a table; writes OUT (JSON)."""

import json
import sys
from pathlib import Path

import numpy as np

work, out = Path(sys.argv[1]), Path(sys.argv[2])
off = np.load(work / "official_z.npz")
ours = np.load(work / "jaxedit_dump/batch_000.npz")
assert (off["case_ids"] == ours["case_ids"]).all(), "the two runs searched other requests"
f64 = np.load(work / "official_z_f64.npz") if (work / "official_z_f64.npz").exists() else None


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


rows = []
for i, cid in enumerate(off["case_ids"]):
    row = {
        "case_id": int(cid),
        "z_rel_err": rel(ours["targets"][i], off["z"][i]),
        "target_init_rel_err": rel(ours["target_init"][i], off["target_init"][i]),
        "stop_official": int(off["stop_it"][i]),
        "stop_jaxedit": int(ours["stop_steps"][i]),
    }
    if f64 is not None and cid in f64["case_ids"]:
        ref = f64["z"][list(f64["case_ids"]).index(cid)]
        row["official_f32_vs_f64"] = rel(off["z"][i], ref)
        row["jaxedit_f32_vs_f64"] = rel(ours["targets"][i], ref)
    rows.append(row)
    extra = (
        f"  float64 reference: official {row['official_f32_vs_f64']:.2e}, "
        f"jaxedit {row['jaxedit_f32_vs_f64']:.2e}"
        if "jaxedit_f32_vs_f64" in row
        else ""
    )
    print(
        f"case {cid:5d}: z rel err {row['z_rel_err']:.2e}  "
        f"stop {row['stop_official']} vs {row['stop_jaxedit']}{extra}"
    )
errs = np.array([r["z_rel_err"] for r in rows])
summary = {
    "requests": len(rows),
    "max_z_rel_err": float(errs.max()),
    "median_z_rel_err": float(np.median(errs)),
    "within_1e-3": int((errs <= 1e-3).sum()),
    "stops_equal": all(r["stop_official"] == r["stop_jaxedit"] for r in rows),
    "rows": rows,
}
print(
    f"max {errs.max():.2e}, median {np.median(errs):.2e}, {summary['within_1e-3']}/{len(rows)} "
    f"within 1e-3; stop steps equal: {summary['stops_equal']}"
)
out.write_text(json.dumps(summary, indent=1) + "\n")
