"""The binaries' console (`experiments/console.py`): `--help` in sections, the noise filter.

Each binary's `--help` runs in a subprocess: it must list its flags in titled sections (none left to
"other flags"), and say what it writes. The noise filter drops JAX's backend-probing INFO record and
transformers' PyTorch advisory, and nothing else, unless verbose.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

HELP = {
    "edit.py": [
        "model and editing config:",
        "every editing-config field: --config.<path>=<value>, see --helpfull",
        "key statistics C0:",
        "downstream tasks:",
        "run directory and outputs:",
        *(
            f"  {name}"
            for name in (
                "run.json",
                "baseline.json",
                "batches.jsonl",
                "downstream.jsonl",
                "activation.jsonl",
                "snapshots/",
                "checkpoint/",
                ".lock",
                "final.json",
            )
        ),
    ],
    "evaluate.py": ["editing metrics (CounterFact/zsRE):", "downstream tasks:", "--out gets"],
    "benchmark.py": ["what to measure:", "inputs:", "--out gets"],
    "summarize.py": ["run directories:", "output:", "summary.md"],
    "demo.py": ["model:", "what the demo shows:", "$JAXEDIT_CACHE"],
    "tune_smollm2.py": ["the search:", "--out gets"],
}


@pytest.mark.parametrize("binary", sorted(HELP))
def test_help_groups_flags_and_says_what_is_written(binary):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, binary, "--help"],
        cwd=ROOT / "experiments",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr  # absl's status for --help
    out = proc.stdout
    for text in HELP[binary]:
        assert text in out, f"{binary} --help lacks {text!r}"
    assert "other flags:" not in out, f"{binary}: a flag is in no section"
    assert "\nflags:\n" not in out  # absl's unsorted list of the main module is replaced


@pytest.fixture(scope="module")
def console():
    sys.path.insert(0, str(ROOT / "experiments"))
    try:
        import console as module
    finally:
        sys.path.remove(str(ROOT / "experiments"))
    return module


def test_noise_filter(console, monkeypatch):
    monkeypatch.delenv("JAXEDIT_VERBOSE", raising=False)
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    probe, tf = logging.getLogger("jax._src.xla_bridge"), logging.getLogger("transformers")
    handler = Keep()
    for logger in (probe, tf):
        logger.addHandler(handler)
        monkeypatch.setattr(logger, "level", logging.INFO)
    try:
        probe.info("Unable to initialize backend 'tpu': INTERNAL: Failed to open libtpu.so")
        probe.info("a different info record")
        probe.warning("Unable to initialize backend 'cuda': a warning is kept")
        tf.warning("PyTorch was not found. Models won't be available ...")
        tf.warning("Token indices sequence length is longer than ...")
        monkeypatch.setenv("JAXEDIT_VERBOSE", "1")
        probe.info("Unable to initialize backend 'tpu': shown when verbose")
    finally:
        for logger in (probe, tf):
            logger.removeHandler(handler)
    assert seen == [
        "a different info record",
        "Unable to initialize backend 'cuda': a warning is kept",
        "Token indices sequence length is longer than ...",
        "Unable to initialize backend 'tpu': shown when verbose",
    ]
