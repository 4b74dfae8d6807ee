"""Tables and plots from sequential-editing run directories (the library of
experiments/summarize.py).

- `runs`: reading run directories into `Run`s, and the values and series taken from them;
- `tables`: the Markdown/CSV/JSON tables;
- `plots`: the PNG plots;
- `report`: `summarize`, which writes all of them (summary.md, summary.json, CSVs, PNGs) to a
  folder.
"""

from .report import summarize

__all__ = ["summarize"]
