"""One process of the multi-host test (tests/test_multihost.py): edits a tiny Llama on a global
mesh over every process's devices and, on process 0, writes the edited kernels and stop steps.

    python tests/workers/multihost_edit.py OUT.npz TOKENIZER_DIR [COORDINATOR NUM_PROCESSES
        PROCESS_ID MESH]

Without the multi-host arguments it is the single-process, single-device reference. Each process
builds the same model from the same seed and the same host data; every array is placed shard by
shard (`jaxedit.sharding.place`), nothing is gathered to load.
"""

from __future__ import annotations

import sys

import numpy as np


def main(argv: list[str]) -> None:
    out, tokenizer_dir = argv[1], argv[2]
    multi = len(argv) > 3
    if multi:
        from jaxedit import sharding

        sharding.initialize_distributed(argv[3], int(argv[4]), int(argv[5]), timeout_s=60)
    import jax

    from jaxedit import config, editor, sharding, stats, testing
    from jaxedit.requests import EditRequest

    tok = testing.gpt2_tokenizer(tokenizer_dir)
    base = testing.tiny_model(
        "llama",
        tok,
        hidden_size=32,
        intermediate_size=64,
        num_heads=4,
        head_dim=8,
        num_kv_heads=2,
        vocab_size=50264,
    )
    docs = [tok(t)["input_ids"] for t in ["The quick brown fox jumps over the lazy dog."] * 6]
    model = base.shard(sharding.make_mesh(argv[6], base.config)) if multi else base
    cov, _ = stats.collect_second_moments(model, docs, (1, 2), progress=False)
    cfg = config.EditConfig(
        method="ENCORE",
        layers=(1, 2),
        search=config.SearchConfig(lr=1.0, num_steps=10, clamp_norm_factor=4.0, mpes_patience=2),
        solve=config.SolveConfig(cov_weight=1.0, norm_lambda=1.0),
        templates=(("{}",), ("Hello. {}", "Note that {}")),
    )
    ed = editor.Editor(model, cfg, stats.LayerStats(cov=cov), cfg.templates)
    state, steps = ed.init_state(), []
    for batch in (
        [
            EditRequest(0, "I like {}", "Paris", " Rome"),
            EditRequest(1, "We met {}", "John", " piano"),
        ],
        [EditRequest(2, "They drink {}", "coffee", " snow")],
    ):
        state, report = ed.apply(state, batch)
        steps.append(report.stop_steps)
    arrays = {f"L{k}": v for k, v in ed.state_arrays(state).items()}  # gathered on every process
    if jax.process_index() == 0:
        np.savez(
            out,
            steps=np.concatenate(steps),
            processes=jax.process_count(),
            devices=jax.device_count(),
            **arrays,
        )


if __name__ == "__main__":
    main(sys.argv)
