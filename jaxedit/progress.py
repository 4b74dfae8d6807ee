"""Progress of the long stages (C0 accumulation, sequential batches, evaluation) with rate and ETA.

`Progress(total, desc, unit)` reports in one of two ways, chosen once when it is made:

* stderr is a terminal: one tqdm line updating in place (count, rate, time left), shown only for a
  stage that lasts more than `BAR_DELAY_S` and cleared when it ends (`leave=True` keeps it);
* otherwise (CI logs, a file, a pipe, pytest's capture, a notebook kernel): an INFO record on the
  `jaxedit.progress` logger at most every `log_every` seconds, such as
  ``key statistics: 472/600 documents (79%), 8.03 documents/s, 0:15 left``, and one with the total
  time at the end of a stage that logged any. The binaries (absl) print INFO records; a process that
  configures no logging (tests, a user's script) prints nothing.

Library functions with a long loop take `progress: bool = True` and pass it here; `progress=False`
reports nothing at all.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

log = logging.getLogger(__name__)

LOG_EVERY_S = 30.0  # seconds between two plain progress lines
BAR_DELAY_S = 2.0  # a terminal bar appears only for a stage longer than this

T = TypeVar("T")


def stderr_is_terminal() -> bool:
    """True when stderr is an interactive terminal with a width (where a bar can update in place;
    a pseudo-terminal of width 0 would show an empty bar)."""
    isatty = getattr(sys.stderr, "isatty", None)
    try:
        if not (isatty and isatty()):
            return False
        return os.get_terminal_size(sys.stderr.fileno()).columns > 0
    except (OSError, ValueError):  # a closed stream, or no size to be had
        return False


def format_seconds(seconds: float) -> str:
    """``0:15``, ``12:03``, ``1:02:05`` (tqdm's format)."""
    from tqdm import tqdm

    return str(tqdm.format_interval(max(0.0, seconds)))


class Progress:
    """Counts the work of one stage and reports it (module docstring); a context manager.

    Args:
      total: the amount of work (None: unknown; no percentage or time left).
      desc: what is being done, e.g. "key statistics".
      unit: the unit of `total`, plural, e.g. "documents".
      enabled: False reports nothing.
      initial: work already done before (a resumed run); the rate counts only what follows.
      log_every: seconds between plain lines (when stderr is not a terminal).
      leave: keep the terminal bar when the stage ends.
      final_line: log the total time at the end of a stage that logged lines (False: the caller
        logs its own summary).
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "steps",
        *,
        enabled: bool = True,
        initial: int = 0,
        log_every: float = LOG_EVERY_S,
        leave: bool = False,
        final_line: bool = True,
    ):
        self.total, self.desc, self.unit = total, desc, unit
        self.enabled, self.log_every, self.final_line = enabled, log_every, final_line
        self.n = self._initial = initial
        self._start = self._last_log = time.perf_counter()
        self._logged = False
        self._closed = False
        self._bar: Any = None
        if enabled and stderr_is_terminal():
            from tqdm import tqdm

            self._bar = tqdm(
                total=total,
                desc=desc,
                unit=f" {unit}",
                initial=initial,
                leave=leave,
                delay=BAR_DELAY_S,
                dynamic_ncols=True,
                file=sys.stderr,
                mininterval=0.5,
            )

    def update(self, n: int = 1, **postfix: Any) -> None:
        """Adds `n` units of work done; `postfix` values (e.g. tokens=...) are shown beside."""
        if not self.enabled or self._closed:
            return
        self.n += n
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)
            self._bar.update(n)
        elif time.perf_counter() - self._last_log >= self.log_every:
            log.info("%s: %s", self.desc, self.status(postfix))
            self._last_log = time.perf_counter()
            self._logged = True

    def status(self, postfix: dict | None = None) -> str:
        """``472/600 documents (79%), 8.03 documents/s, 0:15 left[, tokens=61417]``."""
        elapsed = time.perf_counter() - self._start
        rate = (self.n - self._initial) / elapsed if elapsed > 0 else 0.0
        if self.total:
            parts = [f"{self.n}/{self.total} {self.unit} ({100 * self.n / self.total:.0f}%)"]
        else:
            parts = [f"{self.n} {self.unit}"]
        if rate >= 1:
            parts.append(f"{rate:.3g} {self.unit}/s")
        elif rate > 0:
            parts.append(f"{1 / rate:.3g} s each")
        if self.total and rate > 0:
            parts.append(f"{format_seconds((self.total - self.n) / rate)} left")
        parts += [f"{k}={v}" for k, v in (postfix or {}).items()]
        return ", ".join(parts)

    def close(self) -> None:
        """Ends the stage: clears (or keeps) the bar, or logs the total time if it logged before."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and self._logged and self.final_line:
            elapsed = time.perf_counter() - self._start
            log.info(
                "%s: %d %s in %s", self.desc, self.n, self.unit, format_seconds(round(elapsed))
            )

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def track(
    items: Iterable[T],
    total: int | None,
    desc: str,
    unit: str = "steps",
    *,
    enabled: bool = True,
    log_every: float = LOG_EVERY_S,
) -> Iterator[T]:
    """Yields `items`, counting one unit of `Progress` per item."""
    with Progress(total, desc, unit, enabled=enabled, log_every=log_every) as bar:
        for item in items:
            yield item
            bar.update()
