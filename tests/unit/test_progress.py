"""Progress: plain lines with counts and an ETA where the output is not a terminal."""

from __future__ import annotations

import io
import re

from rich.console import Console
from rich.progress import Progress

from attattr.core.progress import LineProgress, progress_display


def _console(terminal: bool) -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=terminal, width=100), buffer


def test_a_log_gets_lines_with_counts_and_eta():
    console, buffer = _console(False)
    with LineProgress(console, interval=0) as prog:
        task = prog.add_task("trees", total=4)
        for _ in range(4):
            prog.advance(task)
    lines = buffer.getvalue().splitlines()
    assert len(lines) == 4
    assert re.fullmatch(r"trees: 1/4 \(25 %\), elapsed 0:00:00, eta 0:00:00", lines[0])
    assert re.fullmatch(r"trees: 4/4 \(100 %\), elapsed 0:00:00", lines[-1])  # no eta when done


def test_lines_are_spaced_out_and_the_end_is_always_shown():
    console, buffer = _console(False)
    with LineProgress(console, interval=3600) as prog:
        task = prog.add_task("training", total=3, info="")
        prog.update(task, advance=1, info="loss 0.70")
        prog.update(task, advance=2, info="loss 0.40")
    assert buffer.getvalue().splitlines() == ["training: 3/3 (100 %), elapsed 0:00:00, loss 0.40"]


def test_an_interrupted_task_says_where_it_stopped():
    console, buffer = _console(False)
    try:
        with LineProgress(console, interval=3600) as prog:
            task = prog.add_task("importance (attattr)", total=200)
            prog.advance(task, 8)
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    (line,) = buffer.getvalue().splitlines()
    assert line.startswith("importance (attattr): 8/200 (4 %), elapsed 0:00:00, eta ")


def test_a_terminal_gets_a_live_bar():
    assert isinstance(progress_display(_console(True)[0]), Progress)
    assert isinstance(progress_display(_console(False)[0]), LineProgress)


def test_command_progress_reaches_a_captured_stderr(capsys):
    from attattr.cli.common import progress_bar

    with progress_bar("mining patterns", 2) as advance:
        advance()
        advance()
    err = capsys.readouterr().err
    assert "mining patterns: 2/2 (100 %)" in err
