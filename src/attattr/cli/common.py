"""Helpers every command uses: one-line errors, JSON output, progress bars."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from ..core.errors import InputError
from ..core.files import to_json
from ..core.progress import progress_display
from ..core.quadrature import DEFAULT_STEPS, DEFAULT_TOL, PRESETS, integration_settings

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


# ---- integration options, shared by every command that computes attributions ---------------------
StepsOpt = Annotated[
    str | None,
    typer.Option(
        "--steps",
        help="'auto' (the default: error-controlled, see --tol) or a number of nodes of a fixed --rule "
        "(right Riemann when no rule is named).",
    ),
]
RuleOpt = Annotated[
    str | None,
    typer.Option(
        "--rule",
        help=f"A fixed rule (with {DEFAULT_STEPS} --steps unless given): riemann-right|riemann-left|riemann-mid|"
        "trapezoid|gauss-legendre.",
    ),
]
TolOpt = Annotated[
    float | None,
    typer.Option(
        "--tol", help=f"Error-controlled mode: relative error per layer to reach (default {DEFAULT_TOL:g})."
    ),
]
PaperOpt = Annotated[
    bool,
    typer.Option(
        "--paper", help="The paper's rule exactly: right Riemann, 20 steps, fp32 (= --preset paper)."
    ),
]
PresetOpt = Annotated[
    str | None,
    typer.Option(
        "--preset",
        help=f"{' or '.join(PRESETS)}: 'authors' is the authors' released code (left Riemann; 64 steps for "
        "single examples and triggers, 20 for head importance).",
    ),
]


def parse_steps(steps: str | None) -> int | str | None:
    """--steps as the engine takes it: None, 'auto' or an integer >= 1 (InputError otherwise)."""
    if steps is None or steps == "auto":
        return steps
    try:
        value = int(steps)
    except ValueError:
        value = 0
    if value < 1:
        raise InputError(f"--steps must be an integer >= 1 or 'auto', got {steps!r}")
    return value


def preset_name(paper: bool, preset: str | None) -> str | None:
    """--paper / --preset as one preset name (None: no preset); InputError when they disagree."""
    if paper and preset not in (None, "paper"):
        raise InputError(f"--paper and --preset {preset} contradict each other; give one")
    if preset is not None and preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    return "paper" if paper else preset


def integration_options(
    steps: str | None,
    rule: str | None,
    tol: float | None,
    paper: bool,
    preset: str | None,
    *,
    analysis: str,
    fast: bool = False,
) -> dict[str, Any]:
    """A dataset command's integration options resolved for its `analysis` ("example", "triggers"
    or "pruning"): {"steps", "rule", "dtype", and "tol" in the error-controlled mode}
    (`quadrature.integration_settings`), checked before any work."""
    return integration_settings(
        steps=parse_steps(steps),
        rule=rule,
        tol=tol,
        preset=preset_name(paper, preset),
        fast=fast,
        analysis=analysis,
    )


def integration_text(integration: dict[str, Any]) -> str:
    """One line on how a dataset run integrates, for its summary."""
    if integration.get("steps") == "auto":
        dtype = integration.get("dtype")
        return f"error-controlled to tol {integration['tol']:g}" + (f", dtype {dtype}" if dtype else "")
    return f"{integration['rule']}, {integration['steps']} steps"


def warn_unconverged(attr, advice: str) -> None:
    """Say which layers of one attribution missed tol within the budget: their scores are less
    accurate than asked."""
    missed = [r for r in attr.integration or [] if r.get("converged") is False]
    if not missed:
        return
    shown = ", ".join(
        f"{r['layer']} ({'-' if r['error_estimate'] is None else format(r['error_estimate'], '.1e')})"
        for r in missed
    )
    warn(
        f"{len(missed)} layer(s) did not reach tol {attr.tol:g} within the work budget: layer (error estimate) "
        f"{shown}; {advice} (recorded in meta.json)"
    )


def warn_unconverged_examples(summary: dict[str, Any] | None, where: str) -> None:
    """Say which examples had layers that missed tol within the work budget (never silently)."""
    missed = (summary or {}).get("unconverged") or []
    if not missed:
        return
    shown = "; ".join(f"{m['id']} (layers {', '.join(map(str, m['layers']))})" for m in missed[:5])
    more = f" and {len(missed) - 5} more" if len(missed) > 5 else ""
    warn(
        f"{len(missed)} of {summary['examples']} examples have layers that did not reach tol "
        f"{summary['tol']:g} within the work budget: {shown}{more}; their scores are less accurate than "
        f"asked (listed in {where})"
    )


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


def recipe_dataset(model_id: str | None) -> str | None:
    """The dataset a recipe model was trained on (None for model directories)."""
    from ..models import RECIPES

    recipe = RECIPES.get(model_id or "")
    return getattr(recipe, "dataset", None) if recipe is not None else None


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
