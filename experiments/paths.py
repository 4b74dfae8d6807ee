"""Where the experiment binaries find data when a flag does not say: the one place that knows.

The library itself never guesses a data folder; every `jaxedit` function takes paths from its
caller. The binaries (and only they) default to:

* `data_dir()`: `$JAXEDIT_DATA`, else `../shared/data` beside the checkout (CounterFact, zsRE,
  WikiText-2, the downstream sets, MMLU);
* `shared_dir()`: `$JAXEDIT_SHARED`, else `../shared` beside the checkout (the reference's golden
  fixtures, which `benchmark.py` and `tune_smollm2.py` read).

Every binary also takes explicit paths (`--data_path`, `--stats_text`, `--downstream_data`, ...).
"""

from __future__ import annotations

import os
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """`$JAXEDIT_SHARED`, else the `shared/` folder beside the checkout."""
    env = os.environ.get("JAXEDIT_SHARED")
    return Path(env) if env else _CHECKOUT.parent / "shared"


def data_dir() -> Path:
    """`$JAXEDIT_DATA`, else `shared_dir() / "data"`."""
    env = os.environ.get("JAXEDIT_DATA")
    return Path(env) if env else shared_dir() / "data"
