"""Commands: `attattr triggers mine` and `attattr triggers attack` (docs/triggers.md).

Each command checks its options before any work, makes one analysis call
(`attattr.analyses.triggers`), and renders: a table on the terminal, files through
`attattr.analyses.triggers.files` / `attattr.core.files`, the chart and the report page.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..core.errors import InputError
from .app import app
from .common import (
    PaperOpt,
    PresetOpt,
    RuleOpt,
    StepsOpt,
    TolOpt,
    check_at_least,
    check_out_dir,
    console,
    data_columns,
    dataset_or_recipe_data,
    integration_options,
    integration_text,
    print_json,
    progress_bar,
    warn,
    warn_unconverged_examples,
    write_dataset_report,
)
from .ray_options import (
    CpusPerWorkerOpt,
    GpusPerWorkerOpt,
    RayOpt,
    ShipModelOpt,
    WorkersOpt,
    check_ray_options,
    executor_from_options,
)

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
DataOpt = Annotated[
    str | None,
    typer.Option(
        "--data", "-d", help="Built-in dataset name or a CSV/TSV/JSONL file (default: the recipe's own)."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")]
PairOpt = Annotated[str | None, typer.Option("--pair-column", help="Second-text column (sentence pairs).")]
TextOpt = Annotated[str, typer.Option("--text-column", help="Text column of a data file.")]
LabelOpt = Annotated[str, typer.Option("--label-column", help="Gold-label column of a data file.")]


def _load(
    model: str,
    data: str | None,
    split: str,
    columns: dict[str, str | None],
    quiet: bool,
    *,
    first: int | None = None,
):
    from .. import data as data_mod
    from .. import models

    loaded = models.load(model, quiet=quiet)
    if getattr(loaded, "is_causal_lm", False):
        # docs/decoders.md: a trigger is judged by the class predictions it flips
        raise InputError(
            f"triggers apply to classifiers: {loaded.model_id} is a causal language model, which has no "
            "classes for a trigger to flip (see docs/decoders.md)"
        )
    data = dataset_or_recipe_data(loaded, data)
    dataset = data_mod.load_dataset(data, split, limit=first, **columns)
    return loaded, dataset, data


def _column_settings(columns: dict[str, str | None]) -> dict[str, str]:
    """The columns a mining run records: only those not left at their defaults, so that an
    identical run of an earlier version (which recorded none) keeps its settings."""
    defaults = data_columns("text", None, "label")
    return {k: v for k, v in columns.items() if v != defaults[k] and v is not None}


@triggers_app.command("mine")
def mine(
    model: ModelOpt = "minilm-rt",
    data: DataOpt = None,
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
    steps: StepsOpt = None,
    rule: RuleOpt = None,
    tol: TolOpt = None,
    paper: PaperOpt = False,
    preset: PresetOpt = None,
    order: Annotated[
        str,
        typer.Option("--order", help="Which examples: 'random' (a seeded sample, default) or 'first'."),
    ] = "random",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random sample.")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Examples per attribution batch.")] = 8,
    text_column: TextOpt = "text",
    pair_column: PairOpt = None,
    label_column: LabelOpt = "label",
    show: Annotated[int, typer.Option("--show", help="Patterns to print.")] = 10,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="Start over instead of resuming an identical earlier run.")
    ] = False,
    json_out: JsonOpt = False,
    ray: RayOpt = None,
    workers: WorkersOpt = None,
    cpus_per_worker: CpusPerWorkerOpt = 1,
    gpus_per_worker: GpusPerWorkerOpt = 0.0,
    ship_model: ShipModelOpt = False,
) -> None:
    """Mine one attribution pattern per example and rank them (resumable).

    Example:  attattr triggers mine --model minilm-rt --data rotten-tomatoes --split train
    --examples 500 --out patterns.jsonl

    By default a seeded random sample of the split is mined (--order first: its first N examples;
    the built-in splits keep their source order, positives before negatives). Each finished example
    goes to the run file runs/triggers-mine-<settings hash>.jsonl next to --out as soon as its batch
    is done; an interrupted run started again with the same settings resumes (--fresh: start over).
    """
    from ..analyses.triggers import ORDERS, mine_patterns, write_patterns

    check_at_least("--examples", examples, 1)
    check_at_least("--min-tokens", min_tokens, 0)
    check_at_least("--batch-size", batch_size, 1)
    check_at_least("--show", show, 0)
    if order not in ORDERS:
        raise InputError(f"--order must be one of {', '.join(ORDERS)}, got {order!r}")
    integration = integration_options(steps, rule, tol, paper, preset, analysis="triggers")
    if out.is_dir():
        raise InputError(f"--out {out} is a folder; give the patterns file to write")
    check_ray_options(ray, workers, cpus_per_worker, gpus_per_worker, ship_model)
    check_out_dir(out.parent, "the folder of --out")
    runs_dir = check_out_dir(out.parent / "runs", "the run folder")
    columns = data_columns(text_column, pair_column, label_column)
    loaded, dataset, data = _load(
        model, data, split, columns, quiet=json_out, first=examples if order == "first" else None
    )
    with (
        executor_from_options(ray, workers, cpus_per_worker, gpus_per_worker, ship_model) as executor,
        progress_bar("mining patterns", min(examples, len(dataset)), quiet=json_out) as advance,
    ):
        result = mine_patterns(
            loaded.model,
            loaded.tokenizer,
            dataset,
            examples=examples,
            min_tokens=min_tokens,
            **integration,
            order=order,
            seed=seed,
            batch_size=batch_size,
            runs_dir=runs_dir,
            fresh=fresh,
            resume_from=_old_run_path(out),
            settings=_column_settings(columns),
            progress=advance,
            model_id=loaded.model_id,
            label_names=loaded.label_names,
            executor=executor,
            model_source=model,
        )
    extra = {"integration": result.integration} if result.integration is not None else {}
    write_patterns(out, result, data=data, label_names=loaded.label_names, **extra)
    warn_unconverged_examples(result.integration, str(out))
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
        f"attributions: {integration_text(integration)}; patterns written to {out}"
    )


@triggers_app.command("attack")
def attack_cmd(
    patterns: Annotated[Path, typer.Option("--patterns", "-p", help="Patterns file from `triggers mine`.")],
    model: ModelOpt = "minilm-rt",
    data: DataOpt = None,
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
    text_column: TextOpt = "text",
    pair_column: PairOpt = None,
    label_column: LabelOpt = "label",
    json_out: JsonOpt = False,
) -> None:
    """Insert the best patterns' triggers into every evaluation example; compare accuracy per class
    before and after, against random tokens inserted at the same places.

    Example:  attattr triggers attack --model minilm-rt --patterns patterns.jsonl
    --data rotten-tomatoes --split dev --top 3 --out attack/
    """
    from ..analyses.triggers import (
        attack,
        attack_evaluations,
        load_patterns,
        sample_indices,
        select_patterns,
        write_attack,
    )
    from ..render.plots.triggers import plot_attack

    check_at_least("--top", top, 1)
    check_at_least("--seeds", seeds, 1)
    check_at_least("--limit", limit, 1)
    check_at_least("--batch-size", batch_size, 1)
    check_out_dir(out)
    if not patterns.is_file():
        raise InputError(f"patterns file not found: {patterns}")
    columns = data_columns(text_column, pair_column, label_column)
    loaded, dataset, data = _load(model, data, split, columns, quiet=json_out)
    if limit is not None:  # a seeded sample, not the first N: built-in splits are ordered by label
        dataset = replace(dataset, examples=[dataset[i] for i in sample_indices(len(dataset), limit)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pfile = load_patterns(
            patterns,
            model_id=loaded.model_id,
            tokenizer=loaded.tokenizer,
            num_labels=int(loaded.model.config.num_labels),
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
    written = write_attack(out, report)
    figures = plot_attack(report, out / "attack")
    figures = [*figures, write_dataset_report(out, "adversarial triggers", figures, text=report.markdown())]
    if json_out:
        print_json(
            {
                **report.to_json(),
                "files": [str(f) for f in [*written, *figures]],
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
    console.print(f"wrote {', '.join(str(f) for f in [*written, *figures])}")


def _old_run_path(out: Path) -> Path:
    """Where earlier versions kept the run of `--out` (still resumed when its settings match)."""
    return out.with_name(out.name + ".run.jsonl")
