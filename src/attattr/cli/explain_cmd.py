"""`attattr explain`: attribute one input and print / write what matters."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.table import Table

from ..core.errors import InputError
from ..core.quadrature import DEFAULT_RULE, DEFAULT_STEPS, RULES
from .app import app
from .common import check_out_dir, check_text, console, err_console, print_json, warn

EXAMPLE = 'attattr explain "a gorgeous, witty and deeply moving film" --out out/'


def parse_target(target: str, label_names: list[str] | None) -> str | int:
    """'predicted', 'gold', a class index or a label name -> what `attribute` takes."""
    if target in ("predicted", "gold"):
        return target
    if target.lstrip("-").isdigit():
        return int(target)
    if label_names and target in label_names:
        return label_names.index(target)
    names = ", ".join(label_names or [])
    raise InputError(
        f"unknown target {target!r}: use 'predicted', 'gold', a class index or a label ({names})"
    )


def parse_steps(steps: str) -> int | str:
    if steps == "auto":
        return "auto"
    try:
        value = int(steps)
    except ValueError:
        value = 0
    if value < 1:
        raise InputError(f"steps must be an integer >= 1 or 'auto', got {steps!r}")
    return value


@app.command(
    help=f"Attribute one input (or a sentence pair) to attention heads and connections.\n\nExample:  {EXAMPLE}"
)
def explain(
    text: str = typer.Argument(..., help="The input text."),
    pair: str | None = typer.Option(None, "--pair", help="Second text of a sentence pair."),
    model: str = typer.Option(
        "minilm-rt", "--model", "-m", help="Recipe name, local model directory or hub id."
    ),
    tokenizer: str | None = typer.Option(
        None, "--tokenizer", help="The model's tokenizer, where its directory has none (directory or recipe)."
    ),
    target: str = typer.Option(
        "predicted", help="'predicted', 'gold' (needs --label), a class index or label name."
    ),
    label: str | None = typer.Option(None, help="Gold label (index or name), for --target gold."),
    output: str = typer.Option("prob", help="F: the target's prob, logit or logprob."),
    steps: str = typer.Option(str(DEFAULT_STEPS), help="Integration steps, or 'auto' with gauss-legendre."),
    rule: str = typer.Option(
        DEFAULT_RULE, help="riemann-right|riemann-left|riemann-mid|trapezoid|gauss-legendre"
    ),
    fast: bool = typer.Option(
        False, "--fast", help="Fast preset: Gauss-Legendre, auto steps, bf16 where supported."
    ),
    dtype: str | None = typer.Option(None, help="float32 (default), bfloat16 or auto."),
    top: int = typer.Option(5, help="How many heads and connections to print."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Directory for tensors, metadata, figures, report."
    ),
    no_truncate: bool = typer.Option(
        False, "--no-truncate", help="Refuse inputs longer than the model's maximum."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON instead of tables."),
) -> None:
    from ..core.engine import attribute
    from ..models import load

    # every option that can be checked without the model is checked before loading it
    out = check_out_dir(out)
    text = check_text(text, "text")
    pair = check_text(pair, "--pair")
    steps_arg = parse_steps(steps)
    if rule not in RULES:
        raise InputError(f"unknown integration rule {rule!r}; choose one of: {', '.join(RULES)}")
    loaded = load(model, quiet=json_out, tokenizer=tokenizer)
    target_arg = parse_target(target, loaded.label_names)
    gold = None
    if label is not None:
        gold = parse_target(label, loaded.label_names)
        if not isinstance(gold, int):
            raise InputError(f"--label must be a class index or label name, got {label!r}")
    started = time.perf_counter()
    attr = attribute(
        loaded.model,
        loaded.tokenizer,
        text,
        pair,
        target=target_arg,
        label=gold,
        output=output,
        steps=steps_arg,
        rule=rule,
        fast=fast,
        dtype=dtype,
        truncate=not no_truncate,
        model_id=loaded.model_id,
        label_names=loaded.label_names,
    )
    elapsed = time.perf_counter() - started
    if attr.truncated:
        warn(
            f"the input was truncated to the model's maximum of {len(attr.tokens)} tokens (recorded in meta.json)"
        )
    written: list[Path] = []
    if out is not None:
        from ..render.outputs import write_explanation  # matplotlib: only when files are written

        written = write_explanation(attr, out)
    if json_out:
        summary = attr.to_json()
        summary["seconds"] = elapsed
        summary["files"] = [str(p) for p in written]
        print_json(summary)
        return
    console.print(f"[bold]model:[/bold] {loaded.describe()}")
    print_summary(attr, top=top, seconds=elapsed)
    if out is not None:
        console.print(
            f"\nwrote {len(written)} files to [bold]{out}[/bold]: " + ", ".join(p.name for p in written)
        )


def print_summary(attr, *, top: int, seconds: float) -> None:
    probs = "  ".join(f"{attr.label_name(i)} {p:.3f}" for i, p in enumerate(attr.probabilities))
    pred = attr.label_name(attr.predicted)
    console.print(f"[bold]prediction:[/bold] {pred}  ({probs})")
    text = attr.text + (f"  ||  {attr.text_pair}" if attr.text_pair else "")
    console.print(f"[bold]input:[/bold] {text}  ({len(attr.tokens)} tokens)")
    console.print(
        f"[bold]explained:[/bold] F = {attr.output} of '{attr.label_name(attr.target)}' ({attr.target_mode}) "
        f"= {attr.output_value:.4f}; {attr.rule}, {attr.steps} steps, {attr.dtype}; {seconds:.1f} s"
    )
    imp = attr.head_importance()
    heads = Table(title="top heads (max attribution)", title_justify="left")
    heads.add_column("layer", justify="right")
    heads.add_column("head", justify="right")
    heads.add_column("importance", justify="right")
    for flat in imp.flatten().topk(min(top, imp.numel())).indices.tolist():
        pos, h = divmod(flat, imp.shape[1])
        heads.add_row(str(attr.layers[pos]), str(h), f"{float(imp[pos, h]):.4f}")
    console.print(heads)
    edges = Table(title="top connections (query <- key)", title_justify="left")
    for col in ("layer", "head", "query", "", "key", "score"):
        edges.add_column(col, justify="right" if col in ("layer", "head", "score") else "left")
    for e in attr.top_edges(top):
        edges.add_row(
            str(e.layer),
            str(e.head),
            f"{e.query_token} [{e.query}]",
            "<-",
            f"{e.key_token} [{e.key}]",
            f"{e.score:.4f}",
        )
    console.print(edges)
    comp = Table(title="completeness: sum of scores vs F(A) - F(0*A)", title_justify="left")
    for col in ("layer", "sum of scores", "F(A) - F(0)", "gap"):
        comp.add_column(col, justify="right")
    for row in attr.completeness_table():
        comp.add_row(
            str(row["layer"]), f"{row['sum_scores']:.4f}", f"{row['output_delta']:.4f}", f"{row['gap']:+.4f}"
        )
    console.print(comp)
    if attr.truncated:
        err_console.print("note: the input was truncated")
