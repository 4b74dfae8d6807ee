"""Matmul precision, owned by the library.

XLA's default precision is backend dependent: on TPU a float32 matmul runs as one bfloat16 pass, on
recent NVIDIA GPUs as TF32 (when enabled); only on CPU is it exact float32. jaxedit never relies on
JAX's global default-precision config flag, which a user may or may not set. Instead every jitted
path traces its body under an explicit precision:

* the model forward (logits, generation, metrics, downstream scoring, statistics, analysis) under
  `ModelConfig.matmul_precision` (`jaxedit.load(..., precision=...)`,
  `LanguageModel.with_precision`);
* the editor's own passes (target search, keys) under `EditConfig.matmul_precision`;
* the closed-form solves and the C0 accumulation always at `"highest"`: they are a small share of
  the time and act on ill-conditioned matrices, where one bfloat16 pass gives visibly wrong updates.

Names (those of `jax.default_matmul_precision`):

* `"highest"` (default): full float32 (six bf16 passes on TPU, no TF32 on GPU). What the parity and
  golden tests check.
* `"high"`: three bf16 passes on TPU (≈ float32 on most inputs), TF32 on GPU.
* `"default"`: the backend's fastest float32 matmul (one bf16 pass on TPU, TF32 on GPU). Faster on
  accelerators; activations then differ from the float32 reference at the 1e-3 level, so search
  stop steps and edited weights differ too. Identical to "highest" on CPU.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import jax

from jaxedit.errors import InputError

PRECISIONS = ("highest", "high", "default")
HIGHEST = "highest"


def check_precision(precision: str, field: str = "matmul_precision") -> str:
    """Returns `precision` if it is one of `PRECISIONS`, else raises naming `field`."""
    if precision not in PRECISIONS:
        raise InputError(
            f"{field}={precision!r}: expected one of {PRECISIONS} ('highest' is exact "
            "float32; 'default' is the backend's fastest float32 matmul)"
        )
    return precision


@contextlib.contextmanager
def matmul_precision(precision: str) -> Iterator[None]:
    """Traces what runs inside under `precision` (a name of `PRECISIONS`).

    Used inside jitted functions: the setting is read when each `dot_general` is traced, so it
    decides the precision compiled into that executable, whatever the caller's global flag says.
    """
    with jax.default_matmul_precision(check_precision(precision)):
        yield


def traced_at(precision: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator form of `matmul_precision` for a function that is traced under `jax.jit`."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            with matmul_precision(precision):
                return fn(*args, **kwargs)

        return wrapped

    return wrap
