"""The same edit under `jax.distributed` on two processes gives the one-process weights (issue 12).

The test starts two CPU processes over loopback (4 host devices each, one global 2×4 mesh over the
8) running `tests/workers/multihost_edit.py`, and the single-process, single-device reference;
every subprocess is bounded in time. Marked `mesh` (it runs in `.ci/run`'s mesh pass; the
subprocesses set their own device counts).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxedit import testing

pytestmark = pytest.mark.mesh
WORKER = Path(__file__).parent / "workers" / "multihost_edit.py"
REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300


def _env(devices: int) -> dict[str, str]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
    tok = str(testing.require_shared("data", "gpt2_tokenizer"))
    ref = tmp_path / "ref.npz"
    subprocess.run(
        [sys.executable, str(WORKER), str(ref), tok],
        env=_env(1),
        check=True,
        timeout=TIMEOUT_S,
        capture_output=True,
    )
    out = tmp_path / "multi.npz"
    addr = f"127.0.0.1:{_free_port()}"
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(out), tok, addr, "2", str(i), "data:2,model:4"],
            env=_env(4),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    try:
        logs = [p.communicate(timeout=TIMEOUT_S)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    a, b = np.load(ref), np.load(out)
    assert int(b["processes"]) == 2 and int(b["devices"]) == 8
    assert int(a["processes"]) == 1 and int(a["devices"]) == 1
    np.testing.assert_array_equal(a["steps"], b["steps"])
    names = [k for k in a.files if k.startswith(("Lkernel", "Lprev_kkt"))]
    assert len(names) == 4
    for k in names:
        assert np.linalg.norm(a[k] - b[k]) / np.linalg.norm(a[k]) < 1e-5, k
    assert int(a["Lnum_edits"]) == int(b["Lnum_edits"]) == 3
