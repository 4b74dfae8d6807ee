"""experiments/summarize.py on synthetic run directories with known numbers (one unfinished)."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_module():
    spec = importlib.util.spec_from_file_location(
        "experiments_summarize", ROOT / "experiments" / "summarize.py"
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    # the binary imports its `summary` package from beside it, as `python experiments/summarize.py`
    # does
    sys.path.insert(0, str(ROOT / "experiments"))
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(ROOT / "experiments"))
    return mod


summarize_mod = _load_module()

TASKS = ["sst2", "mmlu"]


def _write(path: Path, obj) -> None:
    path.write_text(json.dumps(obj))


def _jsonl(path: Path, rows, tail: str = "") -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)


def _run_json(label, method, patience, lam):
    out = {
        "config": {
            "method": method,
            "layers": [1, 2],
            "search": {"mpes_patience": patience, "num_steps": 25},
            "solve": {"norm_lambda": lam, "cov_weight": 1.0},
        },
        "model": "tiny",
        "num_requests": 6,
        "batch_size": 2,
        "num_layers": 4,
        "downstream": {"tasks": TASKS, "every": 2, "num_tests": 10, "quirks": "clean"},
    }
    if label:
        out["label"] = label
    return out


def _batch(k, search, update, probs, steps, w1, w2, others=(10.0, 50.0)):
    return {
        "batch": k,
        "num_edits": 2 * (k + 1),
        "case_ids": [2 * k, 2 * k + 1],
        "search_time_s": search,
        "update_time_s": update,
        "time_per_edit_s": (search + update) / 2,
        "stop_steps": steps,
        "target_prob": probs,
        "delta_norm": {"1": 0.1, "2": 0.2},
        "weight_norm": {"1": w1, "2": w2},
        "layer_norms": [others[0], w1, w2, others[1]],
        "distance_from_original": {"1": w1 / 10, "2": w2 / 10},
        "eval": {"ES": 100.0, "PS": 50.0, "NS": 80.0, "S": 70.0},
    }


def _downstream(n, batch, f1s, f1_news):
    return {
        "num_edits": n,
        "batch": batch,
        "quirks": "clean",
        "tasks": {
            t: {"f1": f, "f1_new": g, "mcc": 0.0, "correct": 1, "invalid": 0, "total": 10}
            for t, f, g in zip(TASKS, f1s, f1_news)
        },
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    base_norms = [10.0, 20.0, 40.0, 50.0]

    a = root / "encore"
    a.mkdir()
    _write(a / "run.json", _run_json("ENCORE", "ENCORE", 4, 20.0))
    _jsonl(
        a / "batches.jsonl",
        [
            _batch(0, 4.0, 2.0, [0.5, 0.7], [4, 6], 22.0, 41.0),
            _batch(1, 1.0, 0.5, [0.9, 0.9], [5, 5], 26.0, 42.0),
            _batch(2, 1.0, 0.5, [0.8, 0.6], [10, 0], 30.0, 44.0),
        ],
    )
    _write(
        a / "baseline.json",
        {
            "layer_norms": base_norms,
            "counterfact": {"ES": 30.0, "PS": 30.0, "NS": 70.0, "S": 38.0, "GE": 600.0},
            "downstream": {},
        },
    )
    later = _downstream(4, 1, [0.7, 0.3], [0.6, 0.2])
    later["tasks"][TASKS[0]]["power"] = {  # the likelihood protocol's paired scores
        "n": 846,
        "accuracy": {"value": 0.55, "ci": [0.52, 0.58]},
        "difference": {"accuracy": {"value": -0.04, "ci": [-0.06, -0.02], "significant": True}},
        "mcnemar": {"b": 10, "c": 44, "p": 3e-6},
    }
    _jsonl(a / "downstream.jsonl", [_downstream(0, -1, [0.8, 0.4], [0.7, 0.3]), later])
    _jsonl(
        a / "activation.jsonl",
        [
            {
                "num_edits": 0,
                "mlp_share": [0.1, 0.2, 0.3, 0.4],
                "attn_share": [0.9, 0.8, 0.7, 0.6],
                "mlp_norm": [1, 1, 1, 1],
                "attn_norm": [1, 1, 1, 1],
            },
            {
                "num_edits": 4,
                "mlp_share": [0.1, 0.25, 0.35, 0.4],
                "attn_share": [0.9, 0.75, 0.65, 0.6],
                "mlp_norm": [1, 1, 1, 1],
                "attn_norm": [1, 1, 1, 1],
            },
        ],
    )
    _jsonl(
        a / "heldout.jsonl",
        [
            {
                "num_edits": 0,
                "batch": -1,
                "perplexity": 27.3,
                "perplexity_ci": [25.2, 29.8],
                "kl": 0.0,
                "kl_ci": [0.0, 0.0],
                "top1_agreement": 1.0,
                "top1_agreement_ci": [1.0, 1.0],
            },
            {
                "num_edits": 4,
                "batch": 1,
                "perplexity": 28.1,
                "perplexity_ci": [26.0, 30.5],
                "kl": 0.0123,
                "kl_ci": [0.010, 0.015],
                "top1_agreement": 0.97,
                "top1_agreement_ci": [0.96, 0.98],
            },
        ],
    )
    _jsonl(
        a / "retention.jsonl",
        [
            {
                "num_edits": 4,
                "batch": 1,
                "batches": [
                    {"batch": 0, "n": 2, "ES": 100.0, "PS": 50.0, "ci": {"ES": [100.0, 100.0]}},
                    {"batch": 1, "n": 2, "ES": 50.0, "PS": 50.0, "ci": {"ES": [0.0, 100.0]}},
                ],
            }
        ],
    )
    _write(
        a / "final.json",
        {
            "num_edits": 6,
            "evaluated": {"fraction": 1.0, "seed": 42, "num_records": 6},
            "before": {"ES": 33.33, "PS": 25.0, "NS": 75.0, "S": 35.0, "GE": 620.0, "ES_acc": 10.0},
            "after": {
                "ES": 100.0,
                "PS": 91.67,
                "NS": 66.66,
                "S": 83.04,
                "GE": 618.2,
                "ES_acc": 83.33,
            },
            "time_per_edit_s": 1.5,
            "search_time_per_edit_s": 1.0,
            "mean_steps": 5.0,
            "mean_target_prob": 0.7333,
        },
    )

    b = root / "memit_seq"
    b.mkdir()
    _write(b / "run.json", _run_json("MEMIT-seq", "MEMIT_seq", 0, 0.0))
    _jsonl(
        b / "batches.jsonl",
        [
            _batch(0, 2.0, 2.0, [0.99, 0.97], [25, 25], 100.0, 200.0),
            _batch(1, 2.0, 2.0, [0.99, 0.99], [25, 25], 300.0, 400.0),
            _batch(2, 2.0, 2.0, [0.98, 0.98], [25, 25], 400.0, 800.0),
        ],
    )
    _write(b / "baseline.json", {"layer_norms": base_norms})
    _jsonl(
        b / "downstream.jsonl",
        [_downstream(0, -1, [0.8, 0.4], [0.7, 0.3]), _downstream(4, 1, [0.2, 0.0], [0.1, 0.1])],
    )
    _write(
        b / "final.json",
        {
            "num_edits": 6,
            "evaluated": {"num_records": 6},
            "before": {"ES": 33.33, "PS": 25.0, "NS": 75.0},
            "after": {"ES": 50.0, "PS": 40.0, "NS": 20.0, "S": 30.0, "GE": 400.0},
        },
    )

    c = root / "alphaedit_partial"  # no label, no final.json, no baseline, a torn last line
    c.mkdir()
    _write(c / "run.json", _run_json(None, "AlphaEdit", 0, 0.0))
    _jsonl(
        c / "batches.jsonl",
        [_batch(0, 3.0, 1.0, [0.5, 0.5], [25, 25], 21.0, 40.5)],
        tail='{"batch": 1, "num_edits": 4, "search_ti',
    )
    return root, [a, b, c]


@pytest.fixture(scope="module")
def result(runs, tmp_path_factory):
    root, _ = runs
    out = tmp_path_factory.mktemp("summary")
    return out, summarize_mod.summarize(str(root / "*"), out)


def _rows(result, name):
    return {
        (r["run"], r.get("layer", r.get("num_edits"))): r for r in result[1]["tables"][name].rows
    }


def test_glob_labels_and_partial_run(result):
    out, res = result
    labels = [r.label for r in res["runs"]]
    assert labels == [
        "alphaedit_partial",
        "ENCORE",
        "MEMIT-seq",
    ]  # sorted glob; dir name without a label
    md = (out / "summary.md").read_text()
    assert md == res["markdown"]
    assert (
        "alphaedit_partial: no final.json (unfinished run?): 1 batch(es), 2 of 6 edits logged" in md
    )
    assert "alphaedit_partial: skipped 1 malformed line(s) of batches.jsonl" in md
    assert "(unfinished)" in md


def test_editing_table(result):
    t = result[1]["tables"]["editing"]
    runs = [r["run"] for r in t.rows]
    assert runs == ["unedited", "ENCORE", "MEMIT-seq"]  # partial run reported in a note instead
    shown = [c.key for c in t.columns if c.markdown]
    assert shown[-6:] == ["ES", "PS", "NS", "S", "GE", "ES_acc"]
    unedited, encore, memit = t.rows
    assert unedited["ES"] == 33.33 and unedited["ES_acc"] == 10.0 and unedited["num_records"] == 6
    assert encore["PS"] == 91.67 and encore["num_edits"] == 6
    assert memit["ES_acc"] is None
    md = t.markdown()
    assert "| ENCORE | ENCORE | 6 | 6 | 100.0 | 91.7 | 66.7 | 83.0 | 618.2 | 83.3 |" in md
    assert "| MEMIT-seq | MEMIT_seq | 6 | 6 | 50.0 | 40.0 | 20.0 | 30.0 | 400.0 | — |" in md
    assert any("alphaedit_partial: no final.json" in n for n in t.notes)


def test_mpes_table(result):
    rows = {r["run"]: r for r in result[1]["tables"]["mpes"].rows}
    e, m, p = rows["ENCORE"], rows["MEMIT-seq"], rows["alphaedit_partial"]
    assert e["mpes"] == "on" and e["norm_lambda"] == 20.0
    assert m["mpes"] == "off" and m["norm_lambda"] == 0.0
    assert e["search_time_per_edit_s"] == pytest.approx(6.0 / 6)
    assert e["time_per_edit_s"] == pytest.approx(9.0 / 6)
    assert e["steady_time_per_edit_s"] == pytest.approx(0.75)
    assert e["mean_target_prob"] == pytest.approx(4.4 / 6)
    assert e["mean_steps"] == pytest.approx(5.0)
    assert m["mean_target_prob"] == pytest.approx(5.90 / 6)
    assert m["search_time_per_edit_s"] == pytest.approx(1.0) and m[
        "time_per_edit_s"
    ] == pytest.approx(2.0)
    assert p["num_edits"] == 2 and p["search_time_per_edit_s"] == pytest.approx(1.5)
    assert p["steady_time_per_edit_s"] is None
    md = result[1]["tables"]["mpes"].markdown()
    row = "| ENCORE | ENCORE | 6 | on | 20 | — | 0.733 | 5.0 | 1.000 | 0.000 | 1.500 | 0.750 |"
    assert row in md


def test_downstream_tables(result):
    f1 = _rows(result, "downstream_f1")
    assert f1[("ENCORE", 0)]["sst2"] == pytest.approx(80.0)
    assert f1[("ENCORE", 4)]["mean"] == pytest.approx(50.0)
    assert f1[("MEMIT-seq", 4)]["mean"] == pytest.approx(10.0)
    new = _rows(result, "downstream_f1_new")
    assert new[("ENCORE", 4)]["mmlu"] == pytest.approx(20.0)
    assert new[("MEMIT-seq", 4)]["mean"] == pytest.approx(10.0)
    assert not any(r == "alphaedit_partial" for r, _ in f1)
    assert any(
        "alphaedit_partial: no downstream" in n for n in result[1]["tables"]["downstream_f1"].notes
    )


def test_norms_table(result):
    rows = _rows(result, "norms")
    assert rows[("ENCORE", 1)]["growth"] == pytest.approx(1.5)
    assert rows[("ENCORE", 2)]["growth"] == pytest.approx(1.1)
    assert rows[("ENCORE", 2)]["distance"] == pytest.approx(4.4)
    assert rows[("MEMIT-seq", 2)]["norm_after"] == 800.0 and rows[("MEMIT-seq", 2)][
        "growth"
    ] == pytest.approx(20.0)
    assert rows[("MEMIT-seq", "max")]["norm_before"] == 50.0
    assert rows[("MEMIT-seq", "max")]["growth"] == pytest.approx(16.0)
    assert rows[("ENCORE", "max")]["growth"] == pytest.approx(1.0)
    partial = rows[("alphaedit_partial", 1)]
    assert (
        partial["norm_before"] is None
        and partial["norm_after"] == 21.0
        and partial["growth"] is None
    )
    assert (
        "| ENCORE | 6 | 1 | 20.00 | 30.00 | ×1.500 | 3.00 |"
        in result[1]["tables"]["norms"].markdown()
    )


def test_activation_table(result):
    rows = {(r["run"], r["point"]): r for r in result[1]["tables"]["activation"].rows}
    assert rows[("ENCORE", "first")]["L1"] == 0.2 and rows[("ENCORE", "last")]["L2"] == 0.35
    assert rows[("ENCORE", "last")]["num_edits"] == 4
    assert "L0" not in rows[("ENCORE", "first")]
    assert not any(r == "MEMIT-seq" for r, _ in rows)


def test_downstream_power_table(result):
    rows = result[1]["tables"]["downstream_power"].rows
    assert len(rows) == 1
    row = rows[0]
    assert (row["run"], row["num_edits"], row["task"], row["n"]) == ("ENCORE", 4, TASKS[0], 846)
    assert row["diff_ci"] == "[-0.060, -0.020]" and row["significant"] is True
    assert row["mcnemar_p"] == 3e-6


def test_heldout_and_retention_tables(result):
    held = result[1]["tables"]["heldout"].rows
    assert [(r["run"], r["num_edits"]) for r in held] == [("ENCORE", 0), ("ENCORE", 4)]
    assert held[1]["perplexity"] == 28.1 and held[1]["kl_ci"] == "[0.010, 0.015]"
    ret = result[1]["tables"]["retention"].rows
    assert [(r["batch"], r["ES"], r["ES_ci"]) for r in ret] == [
        (0, 100.0, "[100.000, 100.000]"),
        (1, 50.0, "[0.000, 100.000]"),
    ]
    assert "6. Held-out perplexity" in result[1]["markdown"]


def test_files_csv_json_and_pngs(result):
    out, res = result
    for name in (
        "summary.md",
        "summary.json",
        "editing.csv",
        "mpes.csv",
        "downstream_f1.csv",
        "downstream_f1_new.csv",
        "norms.csv",
        "activation.csv",
    ):
        assert (out / name).exists(), name
    with open(out / "mpes.csv") as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    assert float(rows["ENCORE"]["search_time_per_edit_s"]) == pytest.approx(1.0)
    assert rows["alphaedit_partial"]["steady_time_per_edit_s"] == ""
    data = json.loads((out / "summary.json").read_text())
    assert data["tables"]["norms"]["rows"][0]["run"] == "alphaedit_partial"
    assert data["series"]["norms"]["ENCORE"]["L1"] == [[0, 20.0], [2, 22.0], [4, 26.0], [6, 30.0]]
    assert [r["finished"] for r in data["runs"]] == [False, True, True]
    for name in (
        "norm_growth.png",
        "downstream.png",
        "downstream_f1_new.png",
        "activation_share.png",
        "mpes.png",
        "downstream_accuracy.png",
        "heldout.png",
        "retention.png",
    ):
        raw = (out / name).read_bytes()
        assert raw[:8] == b"\x89PNG\r\n\x1a\n", name
        width, height = struct.unpack(">II", raw[16:24])
        assert (width, height) == (900, 600), name
        assert len(raw) < 150_000, (name, len(raw))
        assert name in res["markdown"]


def test_labels_flag_missing_dirs_and_empty(runs, tmp_path):
    _, (a, _b, c) = runs
    spec = f"{a},{tmp_path / 'nope'},{c}"
    res = summarize_mod.summarize(spec, tmp_path / "o", "Mine,Other", plots=False)
    assert [r.label for r in res["runs"]] == [
        "Mine",
        "alphaedit_partial",
    ]  # label i goes with path i
    assert any("nope: not a directory" in n for n in res["notes"])
    res = summarize_mod.summarize([str(a), str(c)], tmp_path / "o2", ["X", "X"], plots=False)
    assert [r.label for r in res["runs"]] == ["X (encore)", "X (alphaedit_partial)"]
    empty = tmp_path / "empty"
    empty.mkdir()
    res = summarize_mod.summarize(str(empty), tmp_path / "o3", plots=True)
    assert "no run.json" in res["markdown"] and "no batches logged" in res["markdown"]
    assert (tmp_path / "o3" / "summary.md").exists()


def _cf_record(es: bool) -> dict:
    """A baseline.json record whose rewrite prompt succeeds (ES 1) or not (ES 0)."""
    new, true = (1.0, 2.0) if es else (2.0, 1.0)
    return {
        "rewrite": [{"target_new": new, "target_true": true}],
        "paraphrase": [{"target_new": new, "target_true": true}],
        "neighborhood": [{"target_new": 2.0, "target_true": 1.0}],
    }


@pytest.fixture(scope="module")
def paired(tmp_path_factory):
    """Two runs with per-unit values and known differences: A degrades every measure, B is the
    unedited model on held-out text and downstream items and succeeds on every edit."""
    root = tmp_path_factory.mktemp("paired")
    n_docs, n_items, ids = 40, 200, list(range(100, 120))
    count = [float(10 + (i % 7)) for i in range(n_docs)]
    base_nll = [3.0 * c for c in count]
    labels = [i % 2 for i in range(n_items)]
    base_recs = [_cf_record(False) for _ in ids]

    def held(n, shift, kl, agree):
        return {
            "num_edits": n,
            "batch": n // 10 - 1,
            "perplexity": math.exp(3.0 + shift),
            "per_doc": {
                "nll": [x + shift * c for x, c in zip(base_nll, count)],
                "count": count,
                "kl": [kl * c for c in count],
                "agree": [agree * c for c in count],
            },
        }

    def down(n, wrong):
        preds = [1 - y if i < wrong else y for i, y in enumerate(labels)]
        return {
            "num_edits": n,
            "batch": n // 10 - 1,
            "tasks": {"sst2": {"f1_new": 0.5, "items": {"labels": labels, "preds": preds}}},
        }

    def retention(n, es):
        return {
            "num_edits": n,
            "batches": [
                {
                    "batch": 0,
                    "n": len(ids),
                    "case_ids": ids,
                    "ES": 100 * np.mean(es),
                    "records": {"ES": es, "PS": es},
                }
            ],
        }

    rng = np.random.default_rng(0)
    for name, shift, kl, agree, wrong, es in (
        ("a", 0.2, 0.05, 0.9, 40, [float(x) for x in rng.random(len(ids)) < 0.5]),
        ("b", 0.0, 0.0, 1.0, 0, [1.0] * len(ids)),
    ):
        d = root / name
        d.mkdir()
        _write(d / "run.json", {"label": name.upper(), "config": {"method": "ENCORE"}})
        _jsonl(d / "batches.jsonl", [{"batch": 0, "num_edits": 20}])
        _write(d / "baseline.json", {"case_ids": ids, "records": base_recs})
        _jsonl(d / "heldout.jsonl", [held(0, 0.0, 0.0, 1.0), held(20, shift, kl, agree)])
        _jsonl(d / "downstream.jsonl", [down(0, 0), down(20, wrong)])
        _jsonl(d / "retention.jsonl", [retention(20, es)])
        after = {"ES": 100 * np.mean(es), "PS": 100 * np.mean(es), "NS": 0.0, "S": 0.0}
        _write(
            d / "final.json",
            {
                "num_edits": 20,
                "before": {"ES": 0.0, "PS": 0.0, "NS": 0.0, "S": 0.0},
                "after": after,
                "after_ci": {"ES": [after["ES"] - 10, min(after["ES"] + 10, 100.0)]},
                "after_minus_before": {
                    "ES": {
                        "value": after["ES"],
                        "ci": [after["ES"] - 10, 100.0],
                        "significant": True,
                    }
                },
                "after_records": {"case_ids": ids, "ES": es, "PS": es, "NS": [0.0] * len(ids)},
            },
        )
    out = root / "out"
    return summarize_mod.summarize(f"{root / 'a'},{root / 'b'}", out), out


def test_paired_differences_and_statement(paired):
    res, out = paired
    rows = {(r["comparison"], r["measure"]): r for r in res["tables"]["paired"].rows}
    ppl = rows[("A − unedited", "perplexity (Δ NLL/token)")]
    assert ppl["diff"] == pytest.approx(0.2) and ppl["significant"] and ppl["unit"] == "document"
    assert ppl["n"] == 40 and ppl["diff_lo"] == pytest.approx(0.2)  # the same shift everywhere
    assert rows[("A − unedited", "KL")]["diff"] == pytest.approx(0.05)
    assert rows[("A − unedited", "top-1")]["diff"] == pytest.approx(-0.1)
    assert not rows[("B − unedited", "perplexity (Δ NLL/token)")]["significant"]
    acc = rows[("A − unedited", "sst2 accuracy")]
    assert acc["diff"] == pytest.approx(-20.0) and acc["significant"] and acc["n"] == 200
    assert acc["mcnemar_p"] == pytest.approx(2 * 0.5**40)  # 40 discordant pairs, all one way
    same = rows[("B − unedited", "sst2 accuracy")]
    assert same["diff"] == 0 and not same["significant"] and same["mcnemar_p"] == 1.0
    between = rows[("A − B", "sst2 accuracy")]
    assert between["diff"] == pytest.approx(-20.0) and between["significant"]
    es_a = float(np.mean(json.loads((out / "../a/final.json").read_text())["after_records"]["ES"]))
    ret = rows[("A − B", "retention ES")]
    assert ret["diff"] == pytest.approx(100 * (es_a - 1.0)) and ret["significant"]
    assert rows[("B − unedited", "retention ES")]["diff"] == pytest.approx(100.0)
    assert (
        rows[("A − B", "final NS")]["diff"] == 0 and not rows[("A − B", "final NS")]["significant"]
    )
    md = res["markdown"]
    assert "## 8. Paired differences" in md and "## 9. What is significant" in md
    line = next(l for l in md.splitlines() if l.startswith("- **B − unedited**"))
    assert "Not significant: perplexity" in line and "sst2 accuracy (Δ +0 [+0, +0])" in line
    # The editing table shows the interval and marks the significant paired difference.
    assert "| A | ENCORE | 20 |" in md and "]* |" in md
    with open(out / "paired.csv") as f:
        got = list(csv.DictReader(f))
    assert {"diff_lo", "diff_hi", "significant", "mcnemar_p"} <= set(got[0])
    with open(out / "editing.csv") as f:
        ed = {r["run"]: r for r in csv.DictReader(f)}
    assert ed["A"]["ES_significant"] == "True" and float(ed["A"]["ES_hi"]) <= 100.0
    for name in ("heldout.png", "retention.png", "editing.png", "paired.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name


def test_regularizer_column_names_lti_rect_and_prune():
    from summary import tables

    lti = {"lti": True, "teacher_positions": "aligned"}
    reg = {"rect_keep_percent": 40.0, "prune": True, "prune_reference": "original"}
    reg["prune_when"] = "end"
    assert tables._regularizer_text(lti, reg) == "LTI (aligned), RECT 40 %, PRUNE (original, end)"
    assert tables._regularizer_text({"lti": False}, {"rect_keep_percent": 0.0}) == "—"
