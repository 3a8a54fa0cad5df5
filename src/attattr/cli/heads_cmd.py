"""Commands: `attattr heads importance | effectiveness | prune | correlate` (docs/method.md §2).

Each command checks its options (before loading anything), loads the model and data, calls one
analysis of `attattr.analyses.heads` and renders its result: JSON, figures, report.html and a
short summary. Run files go to <out>/runs/, named by the run's settings.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ..core.errors import InputError
from ..core.files import write_json
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

heads_app = typer.Typer(
    help=(
        "Head importance, head pruning and cross-model correlation of head importance.\n\n"
        "Example:  attattr heads importance --model minilm-rt --data rotten-tomatoes --split dev "
        "--examples 200 --method attattr --out heads/\n\n"
        "Example:  attattr heads prune --model minilm-rt --out prune/\n\n"
        "Example:  attattr heads correlate --models minilm-rt minilm-imdb minilm-bbc --out corr/"
    ),
    no_args_is_help=True,
)
app.add_typer(heads_app, name="heads")

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Recipe name, local directory or hub id.")]
DataOpt = Annotated[
    str | None,
    typer.Option(
        "--data", "-d", help="Built-in dataset or a CSV/TSV/JSONL file (default: the recipe's own)."
    ),
]
SplitOpt = Annotated[str, typer.Option("--split", help="Split to use: train, dev or test.")]
ExamplesOpt = Annotated[int, typer.Option("--examples", "-n", help="Use the first N examples of the split.")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output directory (JSON, figures, run files).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a summary.")]
FastOpt = Annotated[
    bool,
    typer.Option(
        "--fast", help="Error-controlled with dtype auto (bf16 per layer where it keeps the error)."
    ),
]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="Examples per attribution / gradient pass.")]
EvalBatchOpt = Annotated[int, typer.Option("--eval-batch-size", help="Examples per prediction pass.")]
TextOpt = Annotated[str, typer.Option("--text-column", help="Text column of a data file.")]
PairOpt = Annotated[str | None, typer.Option("--pair-column", help="Second-text column (sentence pairs).")]
LabelOpt = Annotated[str, typer.Option("--label-column", help="Gold-label column of a data file.")]
FirstOpt = Annotated[
    bool,
    typer.Option(
        "--first",
        help="Take the first N examples of the split instead of a seeded random sample "
        "(the built-in splits are in source order, sorted by label).",
    ),
]
SampleSeedOpt = Annotated[int, typer.Option("--sample-seed", help="Seed of the random sample of examples.")]
FreshOpt = Annotated[
    bool,
    typer.Option(
        "--fresh",
        help="Start the run over instead of resuming the finished examples of an identical earlier run.",
    ),
]


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _attr_options(steps, rule, tol, paper: bool, preset, fast: bool) -> dict[str, Any]:
    """The integration of the attribution importance (the pruning protocol's preset: gold label)."""
    return integration_options(steps, rule, tol, paper, preset, analysis="pruning", fast=fast)


def _check_method(method: str) -> None:
    from ..analyses.heads import METHODS

    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")


def _load_model(name: str, quiet: bool):
    from .. import models

    return models.load(name, quiet=quiet)  # its tokenizer cuts inputs at the recipe's max_length


def _load_data(
    loaded,
    data: str,
    split: str,
    count: int | None,
    columns: dict[str, Any],
    sample_seed: int | None,
):
    """`count` examples of the split (a seeded sample, or the first ones when sample_seed is None),
    labels expressed as the model's class indices. A causal LM reads prompts instead
    (`_load_prompts`)."""
    from .. import data as data_mod
    from ..analyses.heads import select_examples

    if getattr(loaded, "is_causal_lm", False):
        return _load_prompts(loaded, data, split, count, columns, sample_seed)
    kwargs: dict[str, Any] = {"limit": count if sample_seed is None else None}
    kwargs.update({k: v for k, v in columns.items() if v is not None})
    dataset = data_mod.load_dataset(data, split, **kwargs)
    if len(dataset) == 0:
        raise InputError(f"{data} ({split}) has no examples")
    dataset = data_mod.check_labels(dataset, loaded.label_names, num_labels=loaded.model.config.num_labels)
    if any(x.label is None for x in dataset):
        raise InputError(f"{data} ({split}) has examples without a label; head importance needs gold labels")
    return select_examples(dataset, count, seed=sample_seed)


class _Prompts(list):
    """Prompts of a causal LM's run, with the metric of their set."""

    metric: str | None = None


def _load_prompts(loaded, data: str, split: str, count: int | None, columns: dict[str, Any], sample_seed):
    """A prompt set (ioi, greater-than: its first `count` prompts) or a prompt file (a seeded sample of
    `count` rows, or the first ones), checked against the model's tokenizer (docs/decoders.md)."""
    from .. import prompts
    from ..analyses.heads import select_examples

    generated = data in prompts.PROMPT_SETS
    prompt_set = prompts.load_prompts(
        data,
        split,
        count=count if generated else None,
        prompt_column=columns.get("text_column") or "prompt",
    )
    prompts.check_tokens(prompt_set, loaded.tokenizer)
    chosen = (
        prompt_set.examples if generated else select_examples(prompt_set.examples, count, seed=sample_seed)
    )
    out = _Prompts(chosen)
    out.metric = prompt_set.metric
    return out


def _metric(dataset) -> dict[str, Any]:
    """The metric option of an analysis over a causal LM's prompts (nothing for a classifier's data)."""
    metric = getattr(dataset, "metric", None)
    return {"metric": metric} if metric is not None else {}


def _seed(first: bool, sample_seed: int) -> int | None:
    return None if first else sample_seed


def _sample_label(first: bool, sample_seed: int) -> str:
    return "first" if first else f"random(seed={sample_seed})"


def _progress(quiet: bool):
    """progress(label, total) for analyses that show several bars one after the other."""
    return lambda label, total: progress_bar(label, total, quiet=quiet)


def _top_heads(importance, k: int = 5) -> list[str]:
    order = importance.ascending().flip(0)[:k].tolist()
    h = importance.num_heads
    return [f"{i // h}-{i % h} ({importance.scores.flatten()[i]:.3g})" for i in order]


def _importance(loaded, dataset, method: str, out: Path, *, label: str, quiet: bool, **kwargs):
    """One method's importance over `dataset`, resumable from <out>/runs/, timed."""
    from ..analyses.heads import head_importance
    from ..methods import get_method

    needs_examples = get_method(method).needs_examples
    started = time.perf_counter()
    with progress_bar(label, len(dataset), quiet=quiet or not needs_examples) as advance:
        importance = head_importance(
            loaded.model,
            loaded.tokenizer,
            dataset if needs_examples else None,
            method,
            runs_dir=out / "runs",
            on_example=advance,
            **kwargs,
        )
    importance.settings["seconds"] = round(time.perf_counter() - started, 2)
    return importance


# ---------------------------------------------------------------------------------------------
# importance
# ---------------------------------------------------------------------------------------------
@heads_app.command("importance")
def importance_cmd(
    model: ModelOpt = "minilm-rt",
    data: DataOpt = None,
    split: SplitOpt = "dev",
    examples: ExamplesOpt = 200,
    method: Annotated[
        str, typer.Option("--method", help="attattr, attention, taylor, accuracy-diff or random.")
    ] = "attattr",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random method.")] = 0,
    out: OutOpt = Path("heads"),
    steps: StepsOpt = None,
    rule: RuleOpt = None,
    tol: TolOpt = None,
    paper: PaperOpt = False,
    preset: PresetOpt = None,
    fast: FastOpt = False,
    batch_size: BatchOpt = 8,
    eval_batch_size: EvalBatchOpt = 64,
    text_column: TextOpt = "text",
    pair_column: PairOpt = None,
    label_column: LabelOpt = "label",
    first: FirstOpt = False,
    sample_seed: SampleSeedOpt = 0,
    fresh: FreshOpt = False,
    json_out: JsonOpt = False,
    ray: RayOpt = None,
    workers: WorkersOpt = None,
    cpus_per_worker: CpusPerWorkerOpt = 1,
    gpus_per_worker: GpusPerWorkerOpt = 0.0,
    ship_model: ShipModelOpt = False,
) -> None:
    """Importance of every head over the first N examples of a split: JSON and a heatmap.

    Example:  attattr heads importance --model minilm-rt --data rotten-tomatoes --split dev
    --examples 200 --method attattr --out heads/

    Writes <out>/importance-<method>.json and .png/.svg; an interrupted run resumes from its run
    file <out>/runs/importance-<method>-<settings hash>.jsonl (--fresh: start over).
    """
    from ..analyses.heads import check_importance_options
    from ..methods import get_method
    from ..render.plots.heads import plot_importance

    _check_method(method)
    check_at_least("--examples", examples)
    attr = _attr_options(steps, rule, tol, paper, preset, fast)
    check_importance_options(method, batch_size=batch_size, eval_batch_size=eval_batch_size, **attr)
    check_ray_options(ray, workers, cpus_per_worker, gpus_per_worker, ship_model)
    check_out_dir(out)
    loaded = _load_model(model, json_out)
    data = dataset_or_recipe_data(loaded, data)
    sample = _sample_label(first, sample_seed)
    dataset = []
    if get_method(method).needs_examples:
        columns = data_columns(text_column, pair_column, label_column)
        dataset = _load_data(loaded, data, split, examples, columns, _seed(first, sample_seed))
    context = {"kind": "importance", "method": method, "model_id": loaded.model_id}
    with executor_from_options(ray, workers, cpus_per_worker, gpus_per_worker, ship_model) as executor:
        importance = _importance(
            loaded,
            dataset,
            method,
            out,
            label=f"importance ({method})",
            quiet=json_out,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            seed=seed,
            fresh=fresh,
            settings={**context, "data": data, "split": split, "sample": sample},
            **_metric(dataset),
            executor=executor,
            model_source=model,
            **attr,
        )
    path = importance.save(out / f"importance-{method}.json")
    figures = plot_importance(importance, out / f"importance-{method}")
    files = [str(path)] + [str(f) for f in figures]
    files.append(str(write_dataset_report(out, f"head importance: {method}", files)))
    warn_unconverged_examples(importance.settings.get("integration"), str(path))
    if json_out:
        print_json({**importance.to_dict(), "files": files})
        return
    how = f" ({integration_text(attr)})" if get_method(method).integration else ""
    console.print(
        f"{method} importance of {importance.num_layers}x{importance.num_heads} heads "
        f"from {len(importance.example_ids)} examples{how} in {importance.settings['seconds']:.1f}s"
    )
    console.print("most important (layer-head): " + ", ".join(_top_heads(importance)))
    console.print(f"wrote {', '.join(files)}")


# ---------------------------------------------------------------------------------------------
# effectiveness (Fig. 2)
# ---------------------------------------------------------------------------------------------
@heads_app.command("effectiveness")
def effectiveness_cmd(
    model: ModelOpt = "minilm-rt",
    data: DataOpt = None,
    split: SplitOpt = "dev",
    examples: ExamplesOpt = 200,
    step: Annotated[
        int, typer.Option("--step", help="Evaluate every STEP pruned heads (plus the ends).")
    ] = 4,
    out: OutOpt = Path("effectiveness"),
    steps: StepsOpt = None,
    rule: RuleOpt = None,
    tol: TolOpt = None,
    paper: PaperOpt = False,
    preset: PresetOpt = None,
    fast: FastOpt = False,
    batch_size: BatchOpt = 8,
    eval_batch_size: EvalBatchOpt = 64,
    text_column: TextOpt = "text",
    pair_column: PairOpt = None,
    label_column: LabelOpt = "label",
    first: FirstOpt = False,
    sample_seed: SampleSeedOpt = 0,
    fresh: FreshOpt = False,
    json_out: JsonOpt = False,
    ray: RayOpt = None,
    workers: WorkersOpt = None,
    cpus_per_worker: CpusPerWorkerOpt = 1,
    gpus_per_worker: GpusPerWorkerOpt = 0.0,
    ship_model: ShipModelOpt = False,
) -> None:
    """Prune each example's own least/most important heads: attribution vs attention (Fig. 2).

    Accuracy and mean gold-label probability against the number of heads pruned per example;
    resumable from <out>/runs/effectiveness-<settings hash>.jsonl (--fresh: start over).

    Example:  attattr heads effectiveness --model minilm-rt --data rotten-tomatoes --split dev
    --examples 200 --step 4 --out effectiveness/
    """
    from ..analyses.heads import check_importance_options, effectiveness
    from ..render.plots.heads import plot_effectiveness

    check_at_least("--examples", examples)
    check_at_least("--step", step)
    attr = _attr_options(steps, rule, tol, paper, preset, fast)
    check_importance_options("attattr", batch_size=batch_size, eval_batch_size=eval_batch_size, **attr)
    check_ray_options(ray, workers, cpus_per_worker, gpus_per_worker, ship_model)
    check_out_dir(out)
    loaded = _load_model(model, json_out)
    data = dataset_or_recipe_data(loaded, data)
    columns = data_columns(text_column, pair_column, label_column)
    dataset = _load_data(loaded, data, split, examples, columns, _seed(first, sample_seed))
    started = time.perf_counter()
    with (
        executor_from_options(ray, workers, cpus_per_worker, gpus_per_worker, ship_model) as executor,
        progress_bar("effectiveness", len(dataset), quiet=json_out) as advance,
    ):
        result = effectiveness(
            loaded.model,
            loaded.tokenizer,
            dataset,
            step=step,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            runs_dir=out / "runs",
            fresh=fresh,
            on_example=advance,
            executor=executor,
            model_source=model,
            settings={
                "model_id": loaded.model_id,
                "data": data,
                "split": split,
                "sample": _sample_label(first, sample_seed),
            },
            **_metric(dataset),
            **attr,
        )
    result["seconds"] = round(time.perf_counter() - started, 2)
    path = write_json(out / "effectiveness.json", result)
    figures = plot_effectiveness(result, out / "effectiveness")
    files = [str(path)] + [str(f) for f in figures]
    files.append(str(write_dataset_report(out, "effectiveness of head orderings", files)))
    warn_unconverged_examples(result["settings"].get("integration"), str(path))
    if json_out:
        print_json({**result, "files": files})
        return
    counts = result["counts"]
    table = Table(title=f"accuracy with k heads pruned per example ({result['examples']} examples)")
    table.add_column("ordering")
    shown = sorted({0, counts[len(counts) // 4], counts[len(counts) // 2], counts[3 * len(counts) // 4]})
    for k in shown:
        table.add_column(f"k={k}", justify="right")
    table.add_column("mean over k", justify="right")
    for curve, values in result["curves"].items():
        cells = [f"{values['accuracy'][counts.index(k)]:.3f}" for k in shown]
        table.add_row(curve, *cells, f"{result['summary']['mean_accuracy'][curve]:.3f}")
    console.print(table)
    s = result["summary"]
    console.print(
        f"gap smallest-first minus largest-first: attribution {s['gap_attattr']:.3f}, "
        f"attention {s['gap_attention']:.3f}  ({integration_text(attr)}; {result['seconds']:.1f}s)"
    )
    console.print(f"wrote {', '.join(files)}")


# ---------------------------------------------------------------------------------------------
# prune (Fig. 3)
# ---------------------------------------------------------------------------------------------
@heads_app.command("prune")
def prune_cmd(
    model: ModelOpt = "minilm-rt",
    data: DataOpt = None,
    split: Annotated[str, typer.Option("--split", help="Evaluation split (evaluated in full).")] = "dev",
    importance_split: Annotated[
        str,
        typer.Option(
            "--importance-split",
            help="Split whose first N examples give the importance (default train: no overlap with --split).",
        ),
    ] = "train",
    examples: Annotated[
        int, typer.Option("--examples", "-n", help="Importance from the first N examples.")
    ] = 200,
    eval_limit: Annotated[
        int | None, typer.Option("--eval-limit", help="Evaluate on the first N examples only.")
    ] = None,
    methods: Annotated[
        str, typer.Option("--methods", help="Comma-separated methods.")
    ] = "attattr,taylor,accuracy-diff,attention,random",
    seeds: Annotated[int, typer.Option("--seeds", help="Seeds of the random order (0..N-1).")] = 5,
    importance_files: Annotated[
        list[Path] | None,
        typer.Option(
            "--importance",
            help="A saved importance JSON file (from `heads importance` or an earlier prune) to prune by, "
            "as its method's curve; that method is not computed again (repeatable).",
        ),
    ] = None,
    out: OutOpt = Path("prune"),
    steps: StepsOpt = None,
    rule: RuleOpt = None,
    tol: TolOpt = None,
    paper: PaperOpt = False,
    preset: PresetOpt = None,
    fast: FastOpt = False,
    batch_size: BatchOpt = 8,
    eval_batch_size: EvalBatchOpt = 64,
    text_column: TextOpt = "text",
    pair_column: PairOpt = None,
    label_column: LabelOpt = "label",
    first: FirstOpt = False,
    sample_seed: SampleSeedOpt = 0,
    fresh: FreshOpt = False,
    json_out: JsonOpt = False,
    ray: RayOpt = None,
    workers: WorkersOpt = None,
    cpus_per_worker: CpusPerWorkerOpt = 1,
    gpus_per_worker: GpusPerWorkerOpt = 0.0,
    ship_model: ShipModelOpt = False,
) -> None:
    """Prune 0, 10, ..., 100 % of heads, least important first, per importance method (Fig. 3).

    Importance from the first N examples of --importance-split; each pruned model is evaluated on
    the whole evaluation split. Resumable from <out>/runs/ (--fresh: start over).

    Example:  attattr heads prune --model minilm-rt --data rotten-tomatoes --split dev
    --examples 200 --out prune/
    """
    from ..analyses.heads import FRACTIONS, check_pruning_options, prune_experiment
    from ..analyses.heads import METHODS as KNOWN
    from ..render.plots.heads import plot_importance, plot_pruning

    chosen = [m.strip() for m in methods.split(",") if m.strip()]
    bad = [m for m in chosen if m not in KNOWN]
    if bad or not chosen:
        raise InputError(f"unknown method {bad[0] if bad else '(none)'!r}; choose from: {', '.join(KNOWN)}")
    check_at_least("--examples", examples)
    check_at_least("--seeds", seeds)
    check_at_least("--eval-limit", eval_limit)
    attr = _attr_options(steps, rule, tol, paper, preset, fast)
    check_pruning_options(chosen, seeds=seeds, batch_size=batch_size, eval_batch_size=eval_batch_size, **attr)
    check_ray_options(ray, workers, cpus_per_worker, gpus_per_worker, ship_model)
    check_out_dir(out)
    given = _saved_importances(importance_files)  # each becomes a curve beside --methods
    loaded = _load_model(model, json_out)
    data = dataset_or_recipe_data(loaded, data)
    columns = data_columns(text_column, pair_column, label_column)
    sample = _sample_label(first, sample_seed)
    imp_data = _load_data(loaded, data, importance_split, examples, columns, _seed(first, sample_seed))
    eval_data = _load_data(loaded, data, split, eval_limit, columns, _seed(first, sample_seed))
    with executor_from_options(ray, workers, cpus_per_worker, gpus_per_worker, ship_model) as executor:
        result, importances = prune_experiment(
            loaded.model,
            loaded.tokenizer,
            imp_data,
            eval_data,
            chosen,
            seeds=seeds,
            fractions=FRACTIONS,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            runs_dir=out / "runs",
            fresh=fresh,
            context={"model_id": loaded.model_id, "data": data},
            importance_context={"split": importance_split, "sample": sample},
            eval_context={"split": split},
            progress=_progress(json_out),
            **_metric(imp_data),
            executor=executor,
            model_source=model,
            given=given,
            **attr,
        )
    files: list[str] = []
    for label, imp in importances.items():
        if label.startswith("random-") or label in given:
            continue
        files.append(str(imp.save(out / f"importance-{label}.json")))
        files += [str(f) for f in plot_importance(imp, out / f"importance-{label}")]
    path = write_json(out / "prune.json", result)
    figures = plot_pruning(result, out / "prune")
    files = [str(path)] + [str(f) for f in figures] + files
    files.append(str(write_dataset_report(out, "head pruning curves", files)))
    if "attattr" in importances:
        where = str(out / "importance-attattr.json")
        warn_unconverged_examples(importances["attattr"].settings.get("integration"), where)
    if json_out:
        print_json({**result, "files": files})
        return
    table = Table(title=f"accuracy on {result['eval_examples']} examples, p % of heads pruned")
    table.add_column("p", justify="right")
    names = list(result["methods"])
    for name in names:
        table.add_column(name, justify="right")
    for i, f in enumerate(result["fractions"]):
        table.add_row(f"{round(100 * f)}%", *[f"{result['methods'][n]['accuracy'][i]:.3f}" for n in names])
    table.add_row("mean", *[f"{result['mean_accuracy'][n]:.3f}" for n in names])
    console.print(table)
    if "attattr" in importances:
        console.print(f"attattr importance: {integration_text(attr)}")
    console.print(f"wrote {', '.join(files[:3])} and {len(files) - 3} more files in {out}")


def _saved_importances(paths: list[Path] | None) -> dict[str, Any]:
    """Saved importance files (`Importance`) by their method's name (one file per method)."""
    from ..analyses.heads import Importance

    given: dict[str, Any] = {}
    for path in paths or []:
        imp = Importance.load(path)
        if imp.method in given:
            raise InputError(f"two --importance files for the method {imp.method!r}; give one per method")
        given[imp.method] = imp
    return given


# ---------------------------------------------------------------------------------------------
# correlate (Fig. 4)
# ---------------------------------------------------------------------------------------------
@heads_app.command("correlate")
def correlate_cmd(
    names: Annotated[
        list[str] | None,
        typer.Argument(help="More models (so that `--models a b c` works).", show_default=False),
    ] = None,
    models_opt: Annotated[
        list[str] | None,
        typer.Option("--models", help="Models to compare (space- or comma-separated, or repeated)."),
    ] = None,
    data: Annotated[
        list[str] | None,
        typer.Option(
            "--data",
            "-d",
            help="Dataset per model, comma-separated or repeated (default: each recipe's own).",
        ),
    ] = None,
    importance_files: Annotated[
        list[Path] | None,
        typer.Option(
            "--importance", help="Use saved importance JSON files instead of computing (repeatable)."
        ),
    ] = None,
    split: SplitOpt = "dev",
    examples: ExamplesOpt = 200,
    method: Annotated[str, typer.Option("--method", help="Importance method.")] = "attattr",
    out: OutOpt = Path("correlate"),
    steps: StepsOpt = None,
    rule: RuleOpt = None,
    tol: TolOpt = None,
    paper: PaperOpt = False,
    preset: PresetOpt = None,
    fast: FastOpt = False,
    batch_size: BatchOpt = 8,
    eval_batch_size: EvalBatchOpt = 64,
    first: FirstOpt = False,
    sample_seed: SampleSeedOpt = 0,
    fresh: FreshOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Correlate head importance between models fine-tuned on different data (Fig. 4).

    Pearson and Spearman per pair, a scatter per pair and a matrix; resumable (--fresh: start over).

    Example:  attattr heads correlate --models minilm-rt minilm-imdb minilm-bbc --examples 200 --out corr/

    Each model's importance comes from the first N examples of the split of its own dataset
    (or --data, one per model) and is kept in <out>/<model>/.
    """
    from ..analyses.heads import Importance, check_importance_options, correlate
    from ..methods import get_method
    from ..render.plots.heads import plot_correlation_matrix, plot_correlation_pairs, plot_importance

    _check_method(method)
    model_names = [m.strip() for item in (models_opt or []) for m in item.split(",") if m.strip()]
    model_names += [m for m in (names or []) if m.strip()]
    data_names = [d.strip() for item in (data or []) for d in item.split(",") if d.strip()]
    if data_names and len(data_names) != len(model_names):
        raise InputError(
            f"--data names {len(data_names)} datasets for {len(model_names)} models; give one per model"
        )
    if len(model_names) + len(importance_files or []) < 2:
        raise InputError("give at least two models (--models a b) or importance files (--importance f.json)")
    check_at_least("--examples", examples)
    attr = _attr_options(steps, rule, tol, paper, preset, fast)
    check_importance_options(method, batch_size=batch_size, eval_batch_size=eval_batch_size, **attr)
    check_out_dir(out)
    importances: dict[str, Importance] = {}
    files: list[str] = []
    for path in importance_files or []:
        imp = Importance.load(path)
        label = _short(str(imp.settings.get("model") or imp.settings.get("model_id") or Path(path).stem))
        importances[_unique(label, importances)] = imp
    needs_examples = get_method(method).needs_examples
    for i, name in enumerate(model_names):
        loaded = _load_model(name, json_out)
        dname = data_names[i] if data_names else dataset_or_recipe_data(loaded, None)
        dataset = []
        if needs_examples:
            columns = data_columns("text", None, "label")
            dataset = _load_data(loaded, dname, split, examples, columns, _seed(first, sample_seed))
        label = _unique(_short(name), importances)
        folder = out / _safe(label)
        imp = _importance(
            loaded,
            dataset,
            method,
            folder,
            label=f"{label} ({method})",
            quiet=json_out,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            fresh=fresh,
            settings={
                "kind": "importance",
                "method": method,
                "model_id": loaded.model_id,
                "data": dname,
                "split": split,
                "sample": _sample_label(first, sample_seed),
            },
            **attr,
        )
        imp.settings["model"] = name
        files.append(str(imp.save(folder / f"importance-{method}.json")))
        warn_unconverged_examples(imp.settings.get("integration"), files[-1])
        files += [
            str(f) for f in plot_importance(imp, folder / f"importance-{method}", title=f"{label}: {method}")
        ]
        importances[label] = imp
        del loaded
    result = correlate(importances)
    result["method"] = method
    result["settings"] = {
        name: {k: v for k, v in imp.settings.items() if k not in ("examples",)}
        for name, imp in importances.items()
    }
    path = write_json(out / "correlation.json", result)
    figures = plot_correlation_pairs(result, out / "correlation-pairs")
    figures += plot_correlation_matrix(result, out / "correlation-matrix")
    files = [str(path)] + [str(f) for f in figures] + files
    files.append(str(write_dataset_report(out, "head importance correlation across models", files)))
    if json_out:
        print_json({**result, "files": files})
        return
    table = Table(title=f"correlation of {method} head importance")
    for col in ("model a", "model b", "Pearson r", "Spearman ρ"):
        table.add_column(col)
    for pair in result["pairs"]:
        table.add_row(pair["a"], pair["b"], _f(pair["pearson"]), _f(pair["spearman"]))
    console.print(table)
    console.print(f"wrote {', '.join(files[:3])} and {len(files) - 3} more files in {out}")


def _unique(name: str, taken: dict) -> str:
    label, i = name, 2
    while label in taken:
        label, i = f"{name}-{i}", i + 1
    return label


def _short(name: str) -> str:
    """A label for figures: a recipe name as it is, a model directory by its own name."""
    path = Path(name).expanduser()
    return path.name if path.exists() and path.name else name


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name.strip("/")) or "model"


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"
