"""Progress reporting (`jaxedit.progress`): a terminal bar, else log lines, nothing when off.

Under pytest stderr is captured (not a terminal), so the library's long loops report through the
`jaxedit.progress` logger only: no test prints progress noise.
"""

from __future__ import annotations

import io
import logging
import sys

from jaxedit import progress


def test_plain_lines_when_not_a_terminal(caplog, capsys, monkeypatch):
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: False)
    with (
        caplog.at_level(logging.INFO, logger="jaxedit.progress"),
        progress.Progress(4, "key statistics", "documents", log_every=0) as bar,
    ):
        for _ in range(4):
            bar.update(tokens=7)
    lines = [r.getMessage() for r in caplog.records if r.name == "jaxedit.progress"]
    assert lines[0].startswith("key statistics: 1/4 documents (25%), ")
    assert "left" in lines[0] and "tokens=7" in lines[0]
    assert lines[3].startswith("key statistics: 4/4 documents (100%)")
    assert lines[-1].startswith("key statistics: 4 documents in ")
    assert capsys.readouterr().err == ""  # only log records, never raw stderr


def test_no_line_for_a_short_stage_or_when_off(caplog, monkeypatch):
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: False)
    with caplog.at_level(logging.INFO, logger="jaxedit.progress"):
        with progress.Progress(3, "answer NLLs", "pairs") as bar:  # faster than log_every
            bar.update(3)
        with progress.Progress(3, "answer NLLs", "pairs", enabled=False, log_every=0) as bar:
            bar.update(3)
        assert list(progress.track(range(3), 3, "x", enabled=False, log_every=0)) == [0, 1, 2]
    assert not [r for r in caplog.records if r.name == "jaxedit.progress"]


def test_terminal_bar(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: True)
    monkeypatch.setattr(progress, "BAR_DELAY_S", 0.0)
    with progress.Progress(10, "sequential edits", "batches", initial=4, leave=True) as bar:
        bar.update(edits=50)
    text = err.getvalue()
    assert "sequential edits" in text and "5/10" in text and "edits=50" in text


def test_status_rates_and_unknown_total():
    bar = progress.Progress(None, "generation (GE)", "prompts", enabled=False)
    bar.n = 5
    assert bar.status().startswith("5 prompts")
    assert "left" not in bar.status()
    assert progress.format_seconds(75) == "01:15"
