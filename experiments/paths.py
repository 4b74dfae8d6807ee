"""Where the experiment binaries find data when a flag does not say: the one place that knows.

The library itself never guesses a data folder; every `jaxedit` function takes paths from its
caller. The binaries (and only they) default to:

* `data_dir()`: `$JAXEDIT_DATA`, else `../shared/data` beside the checkout (CounterFact, zsRE,
  WikiText-2, the downstream sets, MMLU);
* `shared_dir()`: `$JAXEDIT_SHARED`, else `../shared` beside the checkout (the reference's golden
  fixtures, which `benchmark.py` and `tune_smollm2.py` read).

Every binary also takes explicit paths (`--data_path`, `--stats_text`, `--downstream_data`, ...).

A default data file is a named dataset of `jaxedit.datasets`: `dataset(name, flag_value)` is the
flag's value when given (it must exist), else the file under `data_dir()` when it is there, else
the copy in the download cache (`$JAXEDIT_CACHE/datasets/<name>/`, downloaded and checksummed on
first use). So a fresh machine (Colab, a cluster) needs no `../shared/data`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from jaxedit import datasets

_CHECKOUT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """`$JAXEDIT_SHARED`, else the `shared/` folder beside the checkout."""
    env = os.environ.get("JAXEDIT_SHARED")
    return Path(env) if env else _CHECKOUT.parent / "shared"


def data_dir() -> Path:
    """`$JAXEDIT_DATA`, else `shared_dir() / "data"`."""
    env = os.environ.get("JAXEDIT_DATA")
    return Path(env) if env else shared_dir() / "data"


def dataset(name: str, local: str | os.PathLike | None = None, *, flag: str | None = None) -> Path:
    """Dataset `name`: `local` (a flag's value; must exist), else under `data_dir()`, else fetched.

    Raises `jaxedit.datasets.DatasetError` (an `InputError`: the binaries print one line) naming
    the dataset, the URL and the fix (`flag` is offered as one).
    """
    return datasets.resolve(name, local, data_dir(), hint=f"pass {flag}" if flag else None)


def optional_dataset(name: str, local: str | os.PathLike | None = None) -> Path | None:
    """As `dataset`, but None (and a warning) when the default cannot be had; an explicit `local`
    that does not exist is still an error."""
    if local:
        return dataset(name, local)
    try:
        return dataset(name)
    except datasets.DatasetError as err:
        logging.warning("%s", err)
        return None
