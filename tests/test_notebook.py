"""experiments/colab_tpu.ipynb: committed clean, and executed top to bottom in tiny mode on CPU.

The notebook runs in a real Jupyter kernel (nbclient + ipykernel) started with this interpreter
(`sys.executable`, through a kernel spec written to a temporary JUPYTER_PATH), from experiments/ as
Jupyter would, with JAXEDIT_NOTEBOOK_TINY=1 (random tiny Llama, configs/tiny.py, 4 CounterFact
edits), JAX_PLATFORMS=cpu, JAXEDIT_DATA = the shared data folder and a temporary JAXEDIT_CACHE.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from jaxedit.testing import require_shared

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "experiments" / "colab_tpu.ipynb"
KERNEL = "jaxedit-test-python3"


def _cells(nb) -> dict:
    return {c.get("id"): c for c in nb.cells}


def _text(cell) -> str:
    """Everything a code cell printed (streams and text/plain results)."""
    out = []
    for o in cell.get("outputs", []):
        if o.get("output_type") == "stream":
            out.append(o.get("text", ""))
        elif "data" in o and "text/plain" in o["data"]:
            out.append(o["data"]["text/plain"])
    return "".join(out)


def test_notebook_is_committed_clean():
    nb = json.loads(NOTEBOOK.read_text())
    assert nb["nbformat"] == 4
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1 and "JAXEDIT_NOTEBOOK_TINY" in "".join(tagged[0]["source"])


# A Jupyter kernel editing a tiny model (≈ 1 min); CI runs it (.ci/run: -m slow), and once more on
# a data:2,model:4 mesh of eight CPU devices in the mesh pass (-m mesh; the kernel inherits
# XLA_FLAGS).
@pytest.mark.parametrize(
    "mesh",
    [
        pytest.param("", marks=pytest.mark.slow, id="one-device"),
        pytest.param("data:2,model:4", marks=pytest.mark.mesh, id="mesh-2x4"),
    ],
)
def test_notebook_runs_in_tiny_mode(tmp_path, monkeypatch, mesh):
    if mesh:
        import jax

        if jax.device_count() < 8:
            pytest.skip("needs 8 devices: XLA_FLAGS=--xla_force_host_platform_device_count=8")
    nbformat = pytest.importorskip(
        "nbformat", reason="nbformat is not installed (pip install -e '.[test]')"
    )
    nbclient = pytest.importorskip(
        "nbclient", reason="nbclient is not installed (pip install -e '.[test]')"
    )
    pytest.importorskip("ipykernel", reason="ipykernel is not installed (pip install -e '.[test]')")
    pytest.importorskip(
        "matplotlib", reason="matplotlib is not installed (pip install -e '.[test]')"
    )
    data = require_shared("data")
    for part in (("gpt2_tokenizer", "vocab.json"), ("counterfact", "counterfact-edit.json")):
        require_shared("data", *part)

    # A kernel spec that runs this interpreter, whatever "python3" resolves to on the machine.
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "jaxedit test (python3)",
                "language": "python",
            }
        )
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("JAXEDIT_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("JAXEDIT_NOTEBOOK_MESH", mesh)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("JAXEDIT_DATA", str(data))
    monkeypatch.setenv("JAXEDIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend draws the figure

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        kernel_name=KERNEL,
        timeout=300,
        startup_timeout=120,
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()  # raises CellExecutionError (with the cell's traceback) on any error

    cells = _cells(nb)
    want = "{'data': 2, 'model': 4}" if mesh else "none (one device)"
    assert f"mesh {want}" in _text(cells["model"]), _text(cells["model"])
    assert "tiny mode" in _text(cells["install"]) or "is installed" in _text(cells["install"])
    assert "cpu" in _text(cells["install"]).lower()
    edit = _text(cells["edit"])
    assert "batch   1 (edits 1-2)" in edit and "batch   2 (edits 3-4)" in edit, edit
    assert "4 edits in" in edit
    after = _text(cells["after"])
    assert "before:" in after and "after :" in after, after
    # The figure was drawn (inline PNG) by the plot cell.
    assert any("image/png" in o.get("data", {}) for o in cells["plot"]["outputs"]), cells["plot"][
        "outputs"
    ]
    assert "figure: 2 panels, 3 points per layer" in _text(cells["plot"])
    # Export round trip: exact on one device. On the mesh the edited model's logits come from
    # partitioned matmuls and the reloaded model's from one device, so they agree to rounding
    # (the exported weights themselves are exact: tests/test_convert.py).
    m = re.search(
        r"round trip: max \|logits\(edited\) - logits\(reloaded\)\| = (\S+)", _text(cells["export"])
    )
    assert m and float(m.group(1)) <= (1e-4 if mesh else 0.0), _text(cells["export"])
    summary = _text(cells["summary"])
    for key in ("ES", "PS", "NS", "S"):
        m = re.search(rf"^{key} before -> after: (\S+) -> (\S+)$", summary, re.M)
        assert m, summary
        assert all(0.0 <= float(v) <= 100.0 for v in m.groups()), summary
    assert "4 sequential edits in batches of 2" in summary and summary.rstrip().endswith(
        "NOTEBOOK OK"
    )
    # C0 went to the temporary cache, not the user's.
    assert any((tmp_path / "cache" / "stats").rglob("*.npz"))
