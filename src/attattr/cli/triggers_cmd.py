"""Commands: `attattr triggers mine` and `attattr triggers attack` (SPEC §4)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..core.errors import InputError
from .app import app
from .common import console, print_json, progress_bar, warn, write_dataset_report

triggers_app = typer.Typer(
    help=(
        "Adversarial triggers mined from attribution patterns, and the non-targeted attack.\n\n"
        "Example:  attattr triggers mine --model minilm-rt --data rotten-tomatoes --examples 500 "
        "--out patterns.jsonl\n\n"
        "Example:  attattr triggers attack --model minilm-rt --patterns patterns.jsonl "
        "--data rotten-tomatoes --split dev --top 3 --out attack/"
    ),
    no_args_is_help=True,
)
app.add_typer(triggers_app, name="triggers")

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Recipe name, local directory or hub id.")]
DataOpt = Annotated[str, typer.Option("--data", "-d", help="Built-in dataset name or a CSV/TSV/JSONL file.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")]
PairOpt = Annotated[str | None, typer.Option("--pair-column", help="Second-text column (sentence pairs).")]


def _load(model: str, data: str, split: str, limit: int | None, pair_column: str | None, quiet: bool):
    from .. import data as data_mod
    from .. import models

    loaded = models.load(model, quiet=quiet)
    kwargs = {"limit": limit}
    if pair_column:
        kwargs["pair_column"] = pair_column
    dataset = data_mod.load_dataset(data, split, **kwargs)
    return loaded, dataset


@triggers_app.command("mine")
def mine(
    model: ModelOpt = "minilm-rt",
    data: DataOpt = "rotten-tomatoes",
    split: Annotated[str, typer.Option("--split", help="Split to mine (the paper: train).")] = "train",
    examples: Annotated[
        int, typer.Option("--examples", "-n", help="How many examples to mine (see --order).")
    ] = 500,
    out: Annotated[Path, typer.Option("--out", "-o", help="Patterns file to write (JSON Lines).")] = Path(
        "patterns.jsonl"
    ),
    min_tokens: Annotated[
        int, typer.Option("--min-tokens", help="Skip inputs shorter than this (special tokens included).")
    ] = 15,
    steps: Annotated[int, typer.Option("--steps", help="Integration steps.")] = 20,
    rule: Annotated[str, typer.Option("--rule", help="Integration rule.")] = "riemann-right",
    order: Annotated[
        str,
        typer.Option("--order", help="Which examples: 'random' (a seeded sample, default) or 'first'."),
    ] = "random",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random sample.")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Examples per attribution batch.")] = 8,
    pair_column: PairOpt = None,
    show: Annotated[int, typer.Option("--show", help="Patterns to print.")] = 10,
    json_out: JsonOpt = False,
) -> None:
    """Mine one attribution pattern per example and rank them (resumable).

    Example:  attattr triggers mine --model minilm-rt --data rotten-tomatoes --split train
    --examples 500 --out patterns.jsonl

    By default a seeded random sample of the split is mined (--order first: its first N examples;
    the built-in splits keep their source order, positives before negatives). The run resumes from
    `<out>.run.jsonl` when interrupted (same settings only).
    """
    from ..analyses.runs import RunStore
    from ..analyses.triggers import mine_patterns, mining_settings, write_patterns

    if examples < 1:
        raise InputError(f"--examples must be >= 1, got {examples}")
    limit = examples if order == "first" else None
    loaded, dataset = _load(model, data, split, limit, pair_column, quiet=json_out)
    settings = mining_settings(
        loaded.model,
        loaded.tokenizer,
        dataset,
        examples=examples,
        min_tokens=min_tokens,
        steps=steps,
        rule=rule,
        order=order,
        seed=seed,
        model_id=loaded.model_id,
    )
    store = RunStore(_run_path(out), settings)
    with progress_bar("mining patterns", min(examples, len(dataset)), quiet=json_out) as advance:
        result = mine_patterns(
            loaded.model,
            loaded.tokenizer,
            dataset,
            examples=examples,
            min_tokens=min_tokens,
            steps=steps,
            rule=rule,
            order=order,
            seed=seed,
            batch_size=batch_size,
            store=store,
            progress=advance,
            model_id=loaded.model_id,
            label_names=loaded.label_names,
        )
    write_patterns(out, result, data=data, label_names=loaded.label_names)
    summary = {
        "patterns_file": str(out),
        "model_id": loaded.model_id,
        "data": data,
        "split": split,
        "considered": result.considered,
        "skipped_short": result.skipped,
        "patterns": len(result.patterns),
        "top": [{"rank": i + 1, **p.to_dict()} for i, p in enumerate(result.patterns[:show])],
    }
    if json_out:
        print_json(summary)
        return
    table = Table(title=f"top patterns ({len(result.patterns)} from {result.considered} examples)")
    for col in ("#", "example", "class", "layer-head", "score", "pairs (query→key)"):
        table.add_column(col)
    for i, p in enumerate(result.patterns[:show], start=1):
        table.add_row(
            str(i), str(p.example_id), p.predicted_name, f"{p.layer}-{p.head}", f"{p.score:.3f}", p.describe()
        )
    console.print(table)
    console.print(
        f"{result.skipped} of {result.considered} examples skipped (< {min_tokens} tokens); "
        f"patterns written to {out}"
    )


@triggers_app.command("attack")
def attack_cmd(
    patterns: Annotated[Path, typer.Option("--patterns", "-p", help="Patterns file from `triggers mine`.")],
    model: ModelOpt = "minilm-rt",
    data: DataOpt = "rotten-tomatoes",
    split: Annotated[str, typer.Option("--split", help="Evaluation split.")] = "dev",
    top: Annotated[int, typer.Option("--top", help="Best patterns per predicted class.")] = 3,
    min_score: Annotated[float, typer.Option("--min-score", help="Minimum score sum of a pattern.")] = 0.02,
    seeds: Annotated[int, typer.Option("--seeds", help="Random-token control draws (seeds 0..N-1).")] = 5,
    limit: Annotated[
        int | None, typer.Option("--limit", help="Evaluate on a seeded random sample of N examples.")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Prediction batch size.")] = 64,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Directory for JSON, markdown and the chart.")
    ] = Path("attack"),
    allow_other_model: Annotated[
        bool, typer.Option("--allow-other-model", help="Use patterns mined with another model (warns).")
    ] = False,
    pair_column: PairOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Insert the best patterns' triggers into every evaluation example; compare accuracy per class
    before and after, against random tokens inserted at the same places.

    Example:  attattr triggers attack --model minilm-rt --patterns patterns.jsonl
    --data rotten-tomatoes --split dev --top 3 --out attack/
    """
    from ..analyses.triggers import attack, attack_evaluations, load_patterns, select_patterns
    from ..render.plots.triggers import plot_attack

    if seeds < 1:
        raise InputError(f"--seeds must be >= 1, got {seeds}")
    loaded, dataset = _load(model, data, split, None, pair_column, quiet=json_out)
    if limit is not None:
        from dataclasses import replace

        from ..analyses.triggers import sample_indices

        # a seeded sample, not the first N: built-in splits are ordered by label
        dataset = replace(dataset, examples=[dataset[i] for i in sample_indices(len(dataset), limit)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pfile = load_patterns(
            patterns,
            model_id=loaded.model_id,
            tokenizer=loaded.tokenizer,
            allow_other_model=allow_other_model,
        )
    for w in caught:
        warn(str(w.message))
    chosen = select_patterns(pfile.patterns, top=top, min_score=min_score)
    total = attack_evaluations(len(chosen), seeds, len(dataset))
    with progress_bar("attacking", total, quiet=json_out) as advance:
        report = attack(
            loaded.model,
            loaded.tokenizer,
            pfile.patterns,
            dataset,
            top=top,
            min_score=min_score,
            seeds=tuple(range(seeds)),
            batch_size=batch_size,
            max_length=loaded.max_length,
            label_names=loaded.label_names,
            progress=advance,
        )
    report.settings.update({"model_id": loaded.model_id, "patterns_file": str(patterns), "data": data})
    out.mkdir(parents=True, exist_ok=True)
    (out / "attack.json").write_text(json.dumps(report.to_json(), indent=1))
    (out / "attack.md").write_text(report.markdown())
    figures = plot_attack(report, out / "attack")
    figures = [*figures, write_dataset_report(out, "adversarial triggers", figures, text=report.markdown())]
    if json_out:
        print_json(
            {
                **report.to_json(),
                "files": [str(out / "attack.json"), str(out / "attack.md")] + [str(f) for f in figures],
            }
        )
        return
    before = ", ".join(
        f"{c} {a:.3f} (n={n})"
        for c, a, n in zip(report.classes, report.before, report.class_sizes, strict=True)
    )
    console.print(f"accuracy before: {before}; all {report.before_overall:.3f}")
    table = Table(
        title="trigger attack: accuracy per gold class, before → with trigger; control = random tokens "
        "at the same places (mean ± std over seeds); margin = trigger drop − control drop"
    )
    for col in ("#", "trigger", "from", "layer-head", "score", *report.classes, "adversarial"):
        table.add_column(col)
    for r in report.results:
        cells = [
            f"{c.before:.3f} → {c.after:.3f}\ncontrol {c.control_mean:.3f} ± {c.control_std:.3f}\n"
            f"margin {c.margin:+.3f}{' *' if c.adversarial else ''}"
            for c in r.per_class
        ]
        table.add_row(
            str(r.rank),
            " ".join(r.trigger),
            r.source_name,
            f"{r.layer}-{r.head}",
            f"{r.score:.3f}",
            *cells,
            "yes" if r.adversarial else "no",
        )
    console.print(table)
    console.print(
        f"wrote {out / 'attack.json'}, {out / 'attack.md'} and {', '.join(str(f) for f in figures)}"
    )


def _run_path(out: Path) -> Path:
    return out.with_name(out.name + ".run.jsonl")
