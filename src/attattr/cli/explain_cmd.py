"""`attattr explain`: attribute one input and print / write what matters."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.table import Table

from ..core.errors import InputError
from ..core.quadrature import DEFAULT_MAX_SUBINTERVALS
from .app import app
from .common import (
    PaperOpt,
    PresetOpt,
    RuleOpt,
    StepsOpt,
    TolOpt,
    check_out_dir,
    check_text,
    console,
    err_console,
    parse_steps,
    preset_name,
    print_json,
    recipe_dataset,
    warn,
    warn_unconverged,
)

EXAMPLE = 'attattr explain "a gorgeous, witty and deeply moving film" --out out/'
LLM_EXAMPLE = (
    'attattr explain --model smollm2 "When Mary and John went to the store, John gave a drink to" '
    '--target " Mary" --foil " John" --out out/'
)


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


@app.command(
    help="Attribute one input (or a sentence pair), or a causal LM's prediction, to attention heads and "
    f"connections.\n\nExample:  {EXAMPLE}\n\nExample:  {LLM_EXAMPLE}"
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
        "predicted",
        help="Classifiers: 'predicted', 'gold' (needs --label), a class index or label name. Causal LMs: "
        "'predicted' (the top next token) or a continuation text, e.g. ' Paris' (mind the leading space).",
    ),
    foil: str | None = typer.Option(
        None,
        "--foil",
        help="Causal LMs: contrast the target with this continuation: F = logit(target) - logit(foil).",
    ),
    per_token: bool = typer.Option(
        False, "--per-token", help="Causal LMs: one attribution per token of a multi-token --target."
    ),
    label: str | None = typer.Option(None, help="Gold label (index or name), for --target gold."),
    output: str | None = typer.Option(
        None,
        help="F. Classifiers: the target's prob (default), logit or logprob. Causal LMs: prob, logprob, logit, "
        "logit-diff, prob-diff (default: logit-diff with --foil, logprob for a --target text, prob for the "
        "top next token).",
    ),
    steps: StepsOpt = None,
    rule: RuleOpt = None,
    tol: TolOpt = None,
    max_subintervals: int | None = typer.Option(
        None,
        "--max-subintervals",
        help="Error-controlled mode: most subintervals per layer (default "
        f"{DEFAULT_MAX_SUBINTERVALS}); a layer that misses --tol within them is reported as unconverged.",
    ),
    paper: PaperOpt = False,
    preset: PresetOpt = None,
    fast: bool = typer.Option(
        False, "--fast", help="Error-controlled with dtype auto (bf16 per layer where it keeps the error)."
    ),
    dtype: str | None = typer.Option(
        None, help="float32 (default), bfloat16 or auto (bf16 per layer where its error estimate allows)."
    ),
    device: str | None = typer.Option(None, "--device", help="cpu or cuda (cuda:N); default cpu."),
    top: int = typer.Option(5, help="How many heads and connections to print."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Directory for tensors, metadata, figures, report."
    ),
    truncate: bool | None = typer.Option(
        None,
        "--truncate/--no-truncate",
        help="Cut inputs longer than the model's maximum, or refuse them. Default: classifiers cut the end; "
        "causal LMs refuse (--truncate cuts the beginning of the prompt, keeping the end they predict from).",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON instead of tables."),
) -> None:
    from ..core.engine import attribute, resolve_integration
    from ..core.planning import resolve_device
    from ..models import load

    # every option that can be checked without the model is checked before loading it
    out = check_out_dir(out)
    text = check_text(text, "text")
    pair = check_text(pair, "--pair")
    integration = dict(
        steps=parse_steps(steps),
        rule=rule,
        tol=tol,
        max_subintervals=max_subintervals,
        preset=preset_name(paper, preset),
        fast=fast,
        dtype=dtype,
        output=output,
    )
    device_arg = resolve_device(device)
    # every integration setting and preset conflict (the engine's own check), before the model loads
    resolve_integration(**integration, target=None if target == "predicted" else target)
    loaded = load(model, quiet=json_out, tokenizer=tokenizer)
    if getattr(loaded, "is_causal_lm", False):
        if label is not None:
            raise InputError("--label applies to classifiers; a causal LM's target is a text (--target)")
        target_arg = target  # 'predicted' or a continuation text, kept exactly as given
        gold = None
    else:
        if foil is not None or per_token:
            raise InputError(
                f"{'--foil' if foil is not None else '--per-token'} applies to causal language models; "
                f"{loaded.model_id} is a classifier (its outputs are classes)"
            )
        target_arg = parse_target(target, loaded.label_names)
        gold = None
        if label is not None:
            gold = parse_target(label, loaded.label_names)
            if not isinstance(gold, int):
                raise InputError(f"--label must be a class index or label name, got {label!r}")
    started = time.perf_counter()
    options = dict(
        **integration,
        target=target_arg,
        device=device_arg,
        truncate=truncate,
        model_id=loaded.model_id,
        label_names=loaded.label_names,
    )
    if foil is not None:
        options["foil"] = foil
    if per_token:
        from ..core.engine import attribute_many

        attrs = list(attribute_many(loaded.model, loaded.tokenizer, [text], per_token=True, **options))
    else:
        attrs = [attribute(loaded.model, loaded.tokenizer, text, pair, label=gold, **options)]
    elapsed = time.perf_counter() - started
    if attrs[0].truncated:
        end = "beginning of the prompt" if attrs[0].decoder is not None else "end"
        warn(
            f"the input was truncated to the model's maximum of {len(attrs[0].tokens)} tokens "
            f"(its {end} was cut; recorded in meta.json)"
        )
    for attr in attrs:
        warn_unconverged(attr, "raise --max-subintervals or --tol")
    written: list[Path] = []
    if out is not None:
        from ..data import segment_names_of
        from ..render.outputs import write_explanation  # matplotlib: only when files are written

        names = segment_names_of(recipe_dataset(attrs[0].model_id)) if pair is not None else None
        for k, attr in enumerate(attrs):
            # one folder per target token with --per-token
            target_dir = out / f"token-{k + 1:02d}" if per_token else out
            written += write_explanation(attr, target_dir, segment_names=names)
    if json_out:
        summaries = []
        for attr in attrs:
            summary = attr.to_json()
            summary["seconds"] = elapsed / len(attrs)
            summaries.append(summary)
        result = summaries[0] if not per_token else {"per_token": summaries}
        result["files"] = [str(p) for p in written]
        print_json(result)
        return
    console.print(f"[bold]model:[/bold] {loaded.describe()}")
    for attr in attrs:
        print_summary(attr, top=top, seconds=elapsed / len(attrs))
    if out is not None:
        console.print(
            f"\nwrote {len(written)} files to [bold]{out}[/bold]: "
            + ", ".join(str(p.relative_to(out)) for p in written)
        )


def integration_line(attr) -> str:
    """How the layers were integrated, for the summary: nodes per layer, and any unconverged layer."""
    records = attr.integration or []
    if attr.tol is None or not records:
        return f"{attr.rule}, {attr.steps} steps, {attr.dtype}"
    nodes = ", ".join(str(r["nodes"]) for r in records)
    worst = max((r["error_estimate"] for r in records if r["error_estimate"] is not None), default=None)
    worst_text = f", largest estimate {worst:.1e}" if worst is not None else ""
    return f"error-controlled to tol {attr.tol:g} ({attr.dtype}): nodes per layer {nodes}{worst_text}"


def print_summary(attr, *, top: int, seconds: float) -> None:
    if attr.decoder is not None:
        print_decoder_header(attr, seconds=seconds)
    else:
        probs = "  ".join(f"{attr.label_name(i)} {p:.3f}" for i, p in enumerate(attr.probabilities))
        pred = attr.label_name(attr.predicted)
        console.print(f"[bold]prediction:[/bold] {pred}  ({probs})")
        text = attr.text + (f"  ||  {attr.text_pair}" if attr.text_pair else "")
        console.print(f"[bold]input:[/bold] {text}  ({len(attr.tokens)} tokens)")
        console.print(
            f"[bold]explained:[/bold] F = {attr.output} of '{attr.label_name(attr.target)}' ({attr.target_mode}) "
            f"= {attr.output_value:.4f}; {integration_line(attr)}; {seconds:.1f} s"
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
    records = attr.integration if attr.tol is not None and attr.integration else None
    columns = ("layer", "sum of scores", "F(A) - F(0)", "gap")
    if records:
        columns += ("nodes", "parts", "est. error", "ok")  # parts: subintervals of [0, 1]
    for col in columns:
        comp.add_column(col, justify="right")
    for i, row in enumerate(attr.completeness_table()):
        cells = [
            str(row["layer"]),
            f"{row['sum_scores']:.4f}",
            f"{row['output_delta']:.4f}",
            f"{row['gap']:+.4f}",
        ]
        if records:
            r = records[i]
            estimate = "-" if r["error_estimate"] is None else f"{r['error_estimate']:.1e}"
            cells += [str(r["nodes"]), str(r["subintervals"]), estimate, "yes" if r["converged"] else "NO"]
        comp.add_row(*cells)
    console.print(comp)
    if attr.truncated:
        err_console.print("note: the input was truncated")


def print_decoder_header(attr, *, seconds: float) -> None:
    """A causal LM's prediction (the top next tokens and their probabilities) and what F is."""
    from ..core.objectives import describe_decoder

    d = attr.decoder
    p = d.get("predicting_position")
    after = f" after {attr.tokens[p]!r} (#{p})" if p is not None else ""
    top = "  ".join(f"{t['text']!r} {t['prob']:.3f}" for t in d.get("top", [])[:5])
    console.print(f"[bold]prediction:[/bold] top next tokens{after}: {top}", markup=True, highlight=False)
    forced = len(attr.tokens) - int(d.get("prompt_tokens", len(attr.tokens)))
    extra = f", {forced} forced target tokens" if forced else ""
    console.print(
        f"[bold]prompt:[/bold] {attr.text}  ({d.get('prompt_tokens')} tokens{extra})", highlight=False
    )
    console.print(
        f"[bold]explained:[/bold] F = {describe_decoder(d, attr.tokens)} = {attr.output_value:.4f}; "
        f"{integration_line(attr)}; {seconds:.1f} s",
        highlight=False,
    )
