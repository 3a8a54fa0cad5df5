"""Helpers every command uses: one-line errors, JSON output, progress bars."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console

from ..core.errors import InputError
from ..core.files import to_json
from ..core.progress import progress_display

console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)


def print_json(obj: Any) -> None:
    """`obj` as indented JSON on stdout (tensors and numpy values through `attattr.core.files.plain`)."""
    sys.stdout.write(to_json(obj) + "\n")


def check_out_dir(path: str | Path | None, option: str = "--out") -> Path | None:
    """Refuse, before any work, an output folder that is a file, lies below a file or takes no new
    file (InputError, one line); creates nothing. None passes. Every command calls this first."""
    if path is None:
        return None
    from ..analyses.runs import check_output_folder

    return check_output_folder(path, what=option)


def check_at_least(option: str, value: int | None, low: int = 1) -> None:
    """Refuse a number option below `low` (InputError naming the option); None passes."""
    if value is not None and value < low:
        raise InputError(f"{option} must be >= {low}, got {value}")


def data_columns(text_column: str, pair_column: str | None, label_column: str) -> dict[str, str | None]:
    """The column options of a data file, as `attattr.data.load_dataset` takes them."""
    return {"text_column": text_column, "pair_column": pair_column, "label_column": label_column}


def check_text(text: str | None, what: str = "text") -> str | None:
    """Refuse text that is not valid UTF-8. Undecodable bytes in an argument reach Python as
    surrogate escapes (U+DC80..U+DCFF), which no tokenizer can take."""
    if text is None:
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        what_char = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"character U+{code:04X}"
        raise InputError(
            f"{what} is not valid UTF-8 ({what_char} at position {exc.start}); give the text in UTF-8"
        ) from None
    return text


@contextmanager
def progress_bar(description: str, total: int | None, *, quiet: bool = False):
    """Progress with an ETA on stderr (a bar on a terminal, lines in a log); yields `advance(n=1)`."""
    if quiet:
        yield lambda n=1: None
        return
    with progress_display(err_console) as prog:
        task = prog.add_task(description, total=total)
        yield lambda n=1: prog.advance(task, n)


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/yellow] {message}")


def write_dataset_report(out, title: str, written, *, text: str = "", tables=()):
    """report.html for a dataset command: its PNG figures and tables in one self-contained page."""
    from pathlib import Path

    from ..render.report import Section, write_report

    images = [Path(p) for p in written if Path(p).suffix == ".png"]
    text, found = _split_markdown_tables(text)
    section = Section(title=title, text=text, images=images, tables=[*tables, *found])
    return write_report(Path(out) / "report.html", title=title, sections=[section])


def _split_markdown_tables(text: str) -> tuple[str, list[list[dict[str, str]]]]:
    """Pull `| a | b |` tables out of markdown text as row dicts; the rest stays text."""
    kept, tables, block = [], [], []

    def flush():
        cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in block]
        body = [row for row in cells[1:] if not all(set(c) <= set("-: ") for c in row)]
        if cells:
            tables.append([dict(zip(cells[0], row, strict=False)) for row in body])
        block.clear()

    for line in text.splitlines():
        if line.lstrip().startswith("|"):
            block.append(line)
            continue
        if block:
            flush()
        kept.append(line)
    if block:
        flush()
    return "\n".join(kept), tables


def dataset_or_recipe_data(loaded, data: str | None) -> str:
    """`--data` as given, or else the dataset the model's recipe was trained on."""
    if data:
        return data
    recipe = getattr(loaded, "recipe", None)
    for key in ("dataset", "data"):
        value = recipe.get(key) if isinstance(recipe, dict) else getattr(recipe, key, None)
        if isinstance(value, str) and value:
            return value
    raise InputError(f"model {loaded.model_id!r} has no recipe dataset; give --data")
