"""Run checkpoints (issue 12): the orbax wrapper (jaxedit.checkpoint), and experiments/edit.py
killed with SIGKILL at random moments, resumed with the same command, ending bit-identical to an
uninterrupted run; the earlier `checkpoint.npz` format still resumes; a locked run directory is
refused."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from test_edit_binary import REQUESTS, ROOT, _kernels, setup  # noqa: F401 (setup: the fixture)

from jaxedit import checkpoint, testing
from jaxedit.errors import CorruptFileError
from jaxedit.testing import require_shared

MORE = [
    {
        "case_id": 10 + k,
        "prompt": "The capital city of {} is",
        "subject": subject,
        "target_new": new,
        "target_true": true,
    }
    for k, (subject, new, true) in enumerate(
        [
            ("Dan Brown", "Paris", "Rome"),
            ("Eve Green", "Lima", "Cairo"),
            ("Fay Black", "Oslo", "Bern"),
        ]
    )
]


# --------------------------------------------------------------------------------------------------
# jaxedit.checkpoint


def _arrays() -> dict:
    rng = np.random.default_rng(0)
    return {
        "f32": rng.standard_normal((3, 5)).astype(np.float32),
        "bf16": rng.standard_normal((4, 2)).astype(ml_dtypes.bfloat16),
        "f64": rng.standard_normal((2, 3)),
        "count": np.asarray(7, np.int64),
        "device": jnp.arange(12, dtype=jnp.float32).reshape(3, 4) / 7,
        "device_bf16": (jnp.arange(6, dtype=jnp.float32) / 3).astype(jnp.bfloat16),
    }


def test_round_trip_is_bit_exact_and_keeps_two_steps(tmp_path):
    arrays = _arrays()
    for step in (1, 2, 3):
        checkpoint.save(tmp_path / "ck", step, arrays, {"batches_done": step})
    assert checkpoint.steps(tmp_path / "ck") == [2, 3]
    found = checkpoint.restore(tmp_path / "ck")
    assert found is not None
    step, out, meta = found
    assert step == 3 and meta == {"batches_done": 3} and set(out) == set(arrays)
    for name, a in arrays.items():
        got = np.asarray(out[name])
        assert got.dtype == np.asarray(a).dtype and got.shape == np.asarray(a).shape, name
        assert got.tobytes() == np.asarray(a).tobytes(), name
    # With a template: jax arrays come back as jax arrays with the template's sharding.
    found = checkpoint.restore(tmp_path / "ck", arrays)
    assert found is not None
    out = found[1]
    assert isinstance(out["device"], jax.Array) and isinstance(out["f32"], np.ndarray)
    assert out["device"].sharding == arrays["device"].sharding
    assert out["device_bf16"].dtype == jnp.bfloat16
    assert np.asarray(out["device_bf16"]).tobytes() == np.asarray(arrays["device_bf16"]).tobytes()
    # A template entry of another shape is not forced onto the saved array.
    found = checkpoint.restore(tmp_path / "ck", {"f32": np.zeros((2, 2), np.float32)})
    assert found is not None and found[1]["f32"].shape == (3, 5)


def test_unfinished_step_is_ignored_and_damage_is_named(tmp_path):
    assert checkpoint.restore(tmp_path / "none") is None
    arrays = _arrays()
    checkpoint.save(tmp_path / "ck", 1, arrays, {"batches_done": 1})
    # What a kill mid-save leaves: orbax's temporary folder, never renamed to its step.
    (tmp_path / "ck" / "2.orbax-checkpoint-tmp-123").mkdir()
    assert checkpoint.steps(tmp_path / "ck") == [1]
    found = checkpoint.restore(tmp_path / "ck")
    assert found is not None and found[0] == 1
    for path in (tmp_path / "ck" / "1").rglob("*"):
        if path.is_file():
            path.write_bytes(b"\0" * 7)
    with pytest.raises(CorruptFileError, match=r"checkpoint step .*1 is not readable.*fix: X"):
        checkpoint.restore(tmp_path / "ck", fix="X")


SHARDED = """
import sys
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jaxedit import checkpoint
mesh = Mesh(np.array(jax.devices()[:2]), ("x",))
sharding = NamedSharding(mesh, P("x", None))
a = jax.device_put((jnp.arange(8 * 6, dtype=jnp.float32) / 7).reshape(8, 6), sharding)
b = jax.device_put(a.astype(jnp.bfloat16), sharding)
checkpoint.save(sys.argv[1], 1, {"a": a, "b": b}, {})
saved = {"a": a, "b": b}
abstract = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding) for k, v in saved.items()}
step, out, _ = checkpoint.restore(sys.argv[1], abstract)
for k, v in saved.items():
    assert out[k].sharding == sharding, out[k].sharding
    assert len(out[k].addressable_shards) == 2 and out[k].addressable_shards[0].data.shape == (4, 6)
    assert np.asarray(out[k]).tobytes() == np.asarray(v).tobytes()
print("ok")
"""


def test_sharded_arrays_round_trip_with_their_sharding(tmp_path):
    """Two CPU devices: arrays sharded over both come back sharded the same way, bit-exact."""
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "JAX_PLATFORMS": "cpu",
    }
    out = subprocess.run(
        [sys.executable, "-c", SHARDED, str(tmp_path / "ck")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


# --------------------------------------------------------------------------------------------------
# edit.py


def _command(root: Path, workdir: Path, *args: str) -> list[str]:
    return testing.edit_command(
        ROOT,
        root,
        f"--requests={root / 'requests6.json'}",
        "--batch_size=1",
        "--evaluate=false",
        f"--workdir={workdir}",
        f"--export_dir={workdir}_out",
        *args,
    )


def _env() -> dict:
    return {**os.environ, "JAXEDIT_DATA": str(require_shared("data"))}


def _finish(root: Path, workdir: Path, tries: int = 3) -> subprocess.CompletedProcess:
    out = subprocess.run(
        _command(root, workdir), capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def _batches(workdir: Path) -> list[int]:
    path = workdir / "batches.jsonl"
    if not path.exists():
        return []
    return [json.loads(l)["batch"] for l in path.read_text().splitlines() if l.endswith("}")]


@pytest.fixture(scope="module")
def reference(setup):  # noqa: F811 (the imported fixture)
    """An uninterrupted 6-batch run, and its wall time."""
    root = setup
    (root / "requests6.json").write_text(json.dumps(REQUESTS + MORE))
    # The layer statistics are computed (and cached) once, outside the timed reference.
    warm = subprocess.run(
        _command(root, root / "warm", "--max_batches=0"),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=_env(),
        timeout=300,
    )
    assert warm.returncode == 0, warm.stderr[-3000:]
    proc = subprocess.Popen(
        _command(root, root / "ref"),
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    t0, lines = time.perf_counter(), []  # when each batch line appeared
    try:
        while proc.poll() is None and time.perf_counter() - t0 < 300:
            if len(_batches(root / "ref")) > len(lines):
                lines.append(time.perf_counter() - t0)
            time.sleep(0.005)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
    seconds = time.perf_counter() - t0
    assert _batches(root / "ref") == list(range(6))
    return root, seconds, lines


def _killed(root: Path, workdir: Path, *, delay: float | None = None, when=None) -> bool:
    """Starts the run and SIGKILLs it after `delay` seconds, or as soon as `when()` holds; False
    when it ended first."""
    log = open(workdir.parent / f"{workdir.name}.log", "a")  # noqa: SIM115
    proc = subprocess.Popen(
        _command(root, workdir), cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT
    )
    try:
        t0 = time.perf_counter()
        while proc.poll() is None and time.perf_counter() - t0 < 300:
            if (delay is not None and time.perf_counter() - t0 >= delay) or (
                when is not None and when()
            ):
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
        log.close()
    return rc == -signal.SIGKILL


def _same_as_reference(root: Path, workdir: Path) -> None:
    assert _batches(workdir) == list(range(6))
    assert (workdir / "final.json").exists()
    for a, b in zip(_kernels(root / "ref_out"), _kernels(Path(f"{workdir}_out")), strict=True):
        np.testing.assert_array_equal(a, b)
    assert checkpoint.steps(workdir / "checkpoint") == [5, 6]
    assert not (workdir / "checkpoint.npz").exists()


def _last_step(workdir: Path) -> int:
    done = checkpoint.steps(workdir / "checkpoint")
    return done[-1] if done else 0


def _after_line(workdir: Path, n: int, wait: float):
    """A condition: `wait` seconds after batches.jsonl first holds `n` lines."""
    since: list[float] = []

    def seen() -> bool:
        if not since and len(_batches(workdir)) >= n:
            since.append(time.perf_counter())
        return bool(since) and time.perf_counter() - since[0] >= wait

    return seen


def _step_dir(workdir: Path, *, tmp: bool):
    folder = workdir / "checkpoint"

    def seen() -> bool:
        if not folder.is_dir():
            return False
        names = [p.name for p in folder.iterdir()]
        if tmp:
            return any("tmp" in n for n in names)
        return any(n.isdigit() and int(n) >= 2 for n in names)

    return seen


# a reference, 7 killed runs, 3 resumes (≈ 1.5 min on 2 cores)
@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_is_bit_identical(reference):
    root, seconds, lines = reference
    rng = random.Random(12)
    # One run directory is killed several times in a row (each restart resumes the last kill's
    # checkpoint), then finished: twice at seeded points in [0.2, 0.9] of the reference's wall
    # time (mostly start-up: imports, loading, compiling), then three times inside the editing,
    # a seeded fraction of a batch after a seeded batch's line (between the line, the snapshot and
    # the checkpoint). Two more runs are killed mid-save and right after a step folder appears.
    run = root / "killed"
    gap = (lines[-1] - lines[0]) / (len(lines) - 1)
    kills, seen = 0, []
    for d in [rng.uniform(0.2, 0.9) * seconds for _ in range(2)]:
        kills += _killed(root, run, delay=d)
        seen.append((f"{d:.2f} s", _last_step(run)))
    for _ in range(3):
        n = min(_last_step(run) + rng.randint(1, 2), 5)
        wait = rng.uniform(0.0, 1.0) * gap
        kills += _killed(root, run, when=_after_line(run, n, wait))
        seen.append((f"line {n} + {wait:.2f} s", _last_step(run)))
    print(f"reference {seconds:.1f} s, batch lines at {[round(t, 2) for t in lines]} s")
    print(f"kills (when, last checkpoint step after it): {seen}")
    assert kills >= 4, f"the run ended before most kills: {seen}"
    _finish(root, run)
    _same_as_reference(root, run)
    for name, tmp in (("mid_save", True), ("after_step", False)):
        run = root / name
        assert _killed(root, run, when=_step_dir(run, tmp=tmp)), name
        _finish(root, run)
        _same_as_reference(root, run)


@pytest.mark.slow  # two edit.py runs (about 40 s); the orbax resume is in the default suite
def test_old_npz_checkpoint_still_resumes(reference):
    """A run directory of the earlier format (checkpoint.npz) resumes and continues in the new."""
    root, _, _ = reference
    run = root / "old"
    out = subprocess.run(
        _command(root, run, "--max_batches=3"),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=_env(),
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    found = checkpoint.restore(run / "checkpoint")
    assert found is not None and found[0] == 3
    _, arrays, meta = found
    np.savez(run / "checkpoint.npz", batches_done=np.asarray(meta["batches_done"]), **arrays)

    shutil.rmtree(run / "checkpoint")
    out = _finish(root, run)
    assert "resuming after batch 3" in out.stderr
    _same_as_reference(root, run)


def test_second_process_on_a_held_directory_is_refused(reference):
    root, _, _ = reference
    run = root / "locked"
    first = subprocess.Popen(
        _command(root, run),
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        t0 = time.perf_counter()
        while not (run / ".lock").exists() or not (run / ".lock").read_text().strip():
            assert first.poll() is None and time.perf_counter() - t0 < 120
            time.sleep(0.01)
        # Frozen while it holds the lock, so the second surely finds it live however slow the
        # machine; it continues afterwards.
        first.send_signal(signal.SIGSTOP)
        try:
            second = subprocess.run(
                _command(root, run),
                capture_output=True,
                text=True,
                cwd=ROOT,
                env=_env(),
                timeout=120,
            )
        finally:
            first.send_signal(signal.SIGCONT)
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert lines[-1].endswith(
            f"run directory {run} is in use by process {first.pid} (fix: wait for it or use "
            "another --workdir)"
        ), second.stderr[-2000:]
        assert first.wait(timeout=300) == 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=60)
    _same_as_reference(root, run)  # each batch once, as the uninterrupted run
