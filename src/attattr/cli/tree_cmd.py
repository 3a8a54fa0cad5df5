"""Commands: `attattr tree TEXT` (one example's attribution tree) and `attattr tree stats` (docs/method.md §3).

`tree` is a group whose default command draws a tree, so that both `attattr tree "some text"` and
`attattr tree stats --data ...` work: an argument that is not a sub-command name goes to the
default command. (A text that is literally "stats" can be given as `attattr tree -- stats`.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

from ..core.errors import InputError
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
    dataset_or_recipe_data,
    integration_options,
    integration_text,
    print_json,
    progress_bar,
    recipe_dataset,
    warn_unconverged,
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

DEFAULT_COMMAND = "show"


class _DefaultGroup(TyperGroup):
    """Routes `attattr tree ARGS` to the default command unless ARGS starts with a sub-command."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        if not args or (args[0] in ctx.help_option_names and len(args) == 1):
            args = [DEFAULT_COMMAND, "--help"]  # the default command's help mentions `stats` too
        elif args[0] == "--":
            args = [DEFAULT_COMMAND, *args]
        elif args[0] not in self.commands:
            args = [DEFAULT_COMMAND, *args]
        return super().parse_args(ctx, args)


class _DefaultContext(TyperCommand.context_class):  # typer's own Context (it vendors click)
    @property
    def command_path(self) -> str:  # usage reads "attattr tree [OPTIONS] [TEXT]", not "... tree show"
        return self.parent.command_path if self.parent is not None else super().command_path


class _DefaultCommand(TyperCommand):
    context_class = _DefaultContext


tree_app = typer.Typer(cls=_DefaultGroup, add_completion=False)
app.add_typer(
    tree_app,
    name="tree",
    help=(
        "Attribution tree of a text (the paper's Algorithm 1), and tree analyses over a dataset.\n\n"
        'Example:  attattr tree "a gorgeous, witty and deeply moving film" --out tree/\n\n'
        "Example:  attattr tree stats --model minilm-rt --data rotten-tomatoes --examples 200 --out stats/"
    ),
)

ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Recipe name or local model directory (default: minilm-rt)."),
]
ThresholdOpt = Annotated[
    float,
    typer.Option(
        "--threshold", "-t", help="Keep connections whose normalised score exceeds this, in (0, 1]."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of text.")]
ParentOpt = Annotated[
    str,
    typer.Option(
        "--parent-choice",
        help="'strongest' (a new token's parent: the strongest tree member at that layer) or 'authors' "
        "(the authors' loop order). See docs/trees.md.",
    ),
]
TargetOpt = Annotated[
    str,
    typer.Option(
        "--target",
        help="Class whose output is attributed: 'predicted' or a class index; causal LMs: 'predicted' (the "
        "top next token) or a continuation text such as ' Mary'.",
    ),
]
SegmentNamesOpt = Annotated[
    str | None,
    typer.Option(
        "--segment-names",
        help="Names of a pair's two texts, comma-separated, e.g. 'premise,hypothesis' (default: the "
        "dataset's own names where known, as for SNLI, else 'text,pair text').",
    ),
]
FoilOpt = Annotated[
    str | None,
    typer.Option("--foil", help="Causal LMs: contrast the target with this continuation (logit difference)."),
]


def _integration(steps, rule, tol, paper: bool, preset) -> dict[str, Any]:
    """The attribution's integration (a single example's preset), float32 left out: the options of
    earlier runs, so that their run files keep their names."""
    resolved = integration_options(steps, rule, tol, paper, preset, analysis="example")
    return {k: v for k, v in resolved.items() if v is not None}


def _target(value: str) -> str | int:
    if value in ("predicted", "gold"):
        return value
    try:
        return int(value)
    except ValueError:
        raise InputError(f"--target must be 'predicted' or a class index, got {value!r}") from None


def _segment_names(option: str | None, dataset: str | None = None) -> list[str] | None:
    """--segment-names as two names, or the names of `dataset`'s two texts, or None (the defaults)."""
    if option is not None:
        names = [x.strip() for x in option.split(",")]
        if len(names) != 2 or not all(names):
            raise InputError(f"--segment-names must be two names separated by a comma, got {option!r}")
        return names
    from ..data import segment_names_of

    return segment_names_of(dataset)


def _load_model(name: str, tokenizer: str | None = None):
    from .. import models

    return models.load(name, tokenizer=tokenizer)


def _check_attribution_matches(attr, loaded, path: Path) -> None:
    """An attribution file must come from the model whose tokenizer we were given."""
    if attr.model_id and loaded.model_id and attr.model_id != loaded.model_id:
        raise InputError(
            f"{path} was computed with model {attr.model_id!r}, not {loaded.model_id!r}; "
            "leave out --model or give the model it was computed with"
        )
    tokens = loaded.tokenizer.convert_ids_to_tokens(list(attr.token_ids))
    if list(tokens) != list(attr.tokens):
        raise InputError(
            f"{path} does not match the tokenizer of {loaded.model_id!r} "
            "(its token ids decode to other tokens): it comes from a different model"
        )


@tree_app.command(DEFAULT_COMMAND, cls=_DefaultCommand, hidden=True)
def tree_show(
    text: Annotated[
        str | None, typer.Argument(help="The text to explain (sentence A).", show_default=False)
    ] = None,
    pair: Annotated[
        str | None, typer.Option("--pair", help="Second text of a sentence pair (sentence B).")
    ] = None,
    model: ModelOpt = None,
    threshold: ThresholdOpt = 0.4,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Write tree.png, tree.svg, tree.json, tree.dot and the attributions."
        ),
    ] = None,
    json_out: JsonOpt = False,
    steps: StepsOpt = None,
    rule: RuleOpt = None,
    tol: TolOpt = None,
    paper: PaperOpt = False,
    preset: PresetOpt = None,
    target: TargetOpt = "predicted",
    foil: FoilOpt = None,
    parent_choice: ParentOpt = "strongest",
    attributions: Annotated[
        Path | None,
        typer.Option(
            "--from",
            help="Build the tree from a saved attribution (a directory written by --out or `attattr explain`).",
        ),
    ] = None,
    tokenizer: Annotated[
        str | None,
        typer.Option(
            "--tokenizer", help="The model's tokenizer, where its directory has none (directory or recipe)."
        ),
    ] = None,
    segment_names: SegmentNamesOpt = None,
) -> None:
    """Attribution tree of one text: how information flows between tokens, layer by layer.

    Prints the tree as indented text (each token with its children, the layer and normalised score
    of each edge); --out also writes the drawing, JSON and DOT. With --pair, edges between the two
    texts are marked with their direction (the parent reads the child).

    Example:  attattr tree "a gorgeous, witty and deeply moving film" --out tree/

    Dataset analyses (size, depth, receptive field, edge faithfulness): attattr tree stats --help
    """
    from ..analyses.tree.build import PARENT_CHOICES, build_tree, check_threshold
    from ..core.result import Attribution

    # every option that can be checked without the model is checked before loading it
    out = check_out_dir(out)
    text = check_text(text, "text")
    pair = check_text(pair, "--pair")
    threshold = check_threshold(threshold)
    if parent_choice not in PARENT_CHOICES:
        raise InputError(f"--parent-choice must be one of {', '.join(PARENT_CHOICES)}, got {parent_choice!r}")
    names = _segment_names(segment_names)
    integration = _integration(steps, rule, tol, paper, preset)
    if attributions is not None:
        if any(v is not None for v in (steps, rule, tol, preset)) or paper:
            raise InputError("--from reads a saved attribution; the integration options do not apply")
        attr = Attribution.load(attributions)
        if text is not None and text != attr.text:
            raise InputError(f"the text given differs from the text of {attributions} ({attr.text!r})")
        if model is not None:
            _check_attribution_matches(attr, _load_model(model, tokenizer), attributions)
    else:
        if text is None or not text.strip():
            raise InputError("text is empty: give the text to explain")
        if pair is not None and not pair.strip():
            raise InputError("pair text is empty")
        from ..core.engine import attribute

        loaded = _load_model(model or "minilm-rt", tokenizer)
        # a causal LM's target is a continuation text; its tree's root is the predicting position
        causal = getattr(loaded, "is_causal_lm", False)
        if foil is not None and not causal:
            raise InputError(f"--foil applies to causal language models; {loaded.model_id} is a classifier")
        target_arg = target if causal else _target(target)
        attr = attribute(
            loaded.model,
            loaded.tokenizer,
            text,
            pair,
            target=target_arg,
            **({"foil": foil} if foil is not None else {}),
            **integration,
            model_id=loaded.model_id,
            label_names=loaded.label_names,
        )
        warn_unconverged(attr, "raise --tol")
    names = names or _segment_names(None, recipe_dataset(attr.model_id))
    tree = build_tree(attr, threshold, parent_choice=parent_choice, segment_names=names)

    written: list[Path] = []
    if out is not None:
        from ..render.outputs import write_tree  # matplotlib: only when files are written

        same_folder = attributions is not None and attributions.resolve() == out.resolve()
        written = write_tree(tree, attr, out, save_attribution=not same_folder)

    if json_out:
        data = tree.to_json()
        if written:
            data["files"] = [str(p) for p in written]
        print_json(data)
        return
    from ..analyses.tree.build import tree_title

    heading = tree_title(tree)
    console.print(f"{heading}  ·  {tree.summary()}" if heading else tree.summary(), markup=False)
    console.print(tree.to_text(), markup=False)
    left_out = [f"{t}" for i, t in enumerate(tree.tokens) if not tree.in_tree(i)]
    if left_out:
        console.print(f"not in the tree: {' '.join(left_out)}", style="dim", markup=False)
    if tree.is_pair:
        console.print(_cross_edges_line(tree), markup=False)
    if written:
        console.print(f"wrote {', '.join(str(p) for p in written)}", markup=False)


def _cross_edges_line(tree) -> str:
    """How many of a pair tree's attention edges cross segments, by direction, and which."""
    from ..analyses.tree.build import CROSS_EDGE, SPECIAL_EDGE

    edges = tree.attention_edges()
    kinds = [tree.edge_kind(e) for e in edges]
    cross = [e for e, kind in zip(edges, kinds, strict=True) if kind == CROSS_EDGE]
    special = kinds.count(SPECIAL_EDGE)
    head = f"edges crossing segments: {len(cross)} of {len(edges)}"
    if cross:
        ways: dict[str, list[str]] = {}
        for e in cross:
            ways.setdefault(tree.direction(e), []).append(
                f"{tree.tokens[e.parent]} #{e.parent} ← {tree.tokens[e.child]} #{e.child} (layer {e.layer})"
            )
        head += " — " + "; ".join(f"{way} ({len(v)}): {', '.join(v)}" for way, v in ways.items())
    return f"{head}; {special} touch a special token (not counted as crossing)"


def _ks(value: str) -> list[int]:
    try:
        ks = [int(x) for x in value.replace(" ", "").split(",") if x]
    except ValueError:
        raise InputError(f"--ks must be comma-separated integers, got {value!r}") from None
    if not ks or min(ks) < 0:
        raise InputError(f"--ks must be non-negative integers, got {value!r}")
    return ks


@tree_app.command("stats")
def tree_stats_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory (JSON, figures, run file).")],
    model: Annotated[
        str, typer.Option("--model", "-m", help="Recipe name or local model directory.")
    ] = "minilm-rt",
    data: Annotated[
        str | None,
        typer.Option(
            "--data", "-d", help="Built-in dataset or a CSV/TSV/JSONL file (default: the recipe's own)."
        ),
    ] = None,
    split: Annotated[str, typer.Option("--split", help="Split: train, dev or test.")] = "dev",
    examples: Annotated[
        int, typer.Option("--examples", "-n", help="Use the first N examples of the split.")
    ] = 200,
    threshold: ThresholdOpt = 0.4,
    ks: Annotated[str, typer.Option("--ks", help="Numbers of zeroed connections k, comma-separated.")] = (
        "0,1,2,5,10,20,50"
    ),
    seeds: Annotated[
        int, typer.Option("--seeds", help="Random orders averaged for the random baseline.")
    ] = 3,
    faithfulness: Annotated[
        bool, typer.Option("--faithfulness/--no-faithfulness", help="Run the edge-faithfulness curves.")
    ] = True,
    methods: Annotated[
        str,
        typer.Option(
            "--methods",
            help="Connection rankings for faithfulness, comma-separated: attribution, attention, random, "
            "attribution-nonroot, attention-nonroot (the last two leave out the root's query row).",
        ),
    ] = "attribution,attention,random,attribution-nonroot,attention-nonroot",
    steps: StepsOpt = None,
    rule: RuleOpt = None,
    tol: TolOpt = None,
    paper: PaperOpt = False,
    preset: PresetOpt = None,
    parent_choice: ParentOpt = "strongest",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Examples per attribution pass.")] = 8,
    text_column: Annotated[str, typer.Option("--text-column", help="Text column of a data file.")] = "text",
    pair_column: Annotated[
        str | None, typer.Option("--pair-column", help="Second-text column (sentence pairs).")
    ] = None,
    label_column: Annotated[
        str, typer.Option("--label-column", help="Gold-label column of a data file (optional).")
    ] = "label",
    fresh: Annotated[
        bool,
        typer.Option("--fresh", help="Start over instead of resuming an identical earlier run."),
    ] = False,
    json_out: JsonOpt = False,
    ray: RayOpt = None,
    workers: WorkersOpt = None,
    cpus_per_worker: CpusPerWorkerOpt = 1,
    gpus_per_worker: GpusPerWorkerOpt = 0.0,
    ship_model: ShipModelOpt = False,
    segment_names: SegmentNamesOpt = None,
) -> None:
    """Tree analyses over a dataset split: size and depth distributions, receptive field per layer,
    and edge faithfulness (zeroing the top-k connections by attribution, by attention, at random).
    Sentence pairs: tree edges split into within-segment, cross-segment and special-token edges.

    Resumable: the per-example results go to OUT/runs/tree-stats-<settings hash>.jsonl as they
    finish (--fresh: start over).

    Example:  attattr tree stats --model minilm-rt --data rotten-tomatoes --split dev --examples 200 --out stats/
    """
    from .. import data as data_module
    from ..analyses.runs import check_output_folder
    from ..analyses.tree.build import segment_name
    from ..analyses.tree.stats import check_tree_stats_options, run_tree_stats

    k_values = _ks(ks)
    if examples < 1:
        raise InputError(f"--examples must be at least 1, got {examples}")
    if seeds < 1:
        raise InputError(f"--seeds must be at least 1, got {seeds}")
    rankings = [m.strip() for m in methods.split(",") if m.strip()]
    threshold, k_values = check_tree_stats_options(
        threshold=threshold,
        ks=k_values,
        seeds=seeds,
        methods=rankings,
        parent_choice=parent_choice,
        batch_size=batch_size,
    )
    integration = _integration(steps, rule, tol, paper, preset)
    check_ray_options(ray, workers, cpus_per_worker, gpus_per_worker, ship_model)
    check_output_folder(out)
    names = _segment_names(segment_names)
    loaded = _load_model(model)
    data_name = dataset_or_recipe_data(loaded, data)
    names = names or _segment_names(None, data_name)
    dataset = data_module.load_dataset(
        data_name,
        split,
        text_column=text_column,
        pair_column=pair_column,
        label_column=label_column,
        limit=examples,
    )
    items = list(dataset)[:examples]
    settings = {"model": loaded.model_id, "data": data_name, "split": split}
    with (
        executor_from_options(ray, workers, cpus_per_worker, gpus_per_worker, ship_model) as executor,
        progress_bar("trees", len(items), quiet=json_out) as advance,
    ):
        summary = run_tree_stats(
            loaded.model,
            loaded.tokenizer,
            items,
            threshold=threshold,
            ks=k_values,
            seeds=seeds,
            faithfulness=faithfulness,
            methods=rankings,
            parent_choice=parent_choice,
            runs_dir=out / "runs",
            fresh=fresh,
            settings=settings,
            batch_size=batch_size,
            on_example=advance,
            **integration,
            model_id=loaded.model_id,
            label_names=loaded.label_names,
            executor=executor,
            model_source=model,
        )
    title = f"{loaded.model_id} · {data_name} {split} · {summary['examples']} examples"
    if "segments" in summary:
        summary["segments"]["names"] = [segment_name(k, names) for k in (0, 1)]
    written = _write_stats_outputs(summary, out, title=title)
    written.append(write_dataset_report(out, f"attribution trees: {title}", written))
    warn_unconverged_examples(summary.get("integration"), str(out / "tree_stats.json"))
    if json_out:
        print_json({**summary, "files": [str(p) for p in written]})
        return
    _print_summary(summary, title)
    console.print(f"attributions: {integration_text(integration)}", markup=False)
    console.print(f"wrote {', '.join(str(p) for p in written)}", markup=False)


def _write_stats_outputs(summary: dict[str, Any], out: Path, *, title: str = "") -> list[Path]:
    """tree_stats.json and the figures (size/depth histograms, receptive field, faithfulness)."""
    from ..core.files import write_json
    from ..render.plots.style import save_figure
    from ..render.plots.tree import (
        plot_faithfulness,
        plot_receptive_field,
        plot_segment_split,
        plot_size_depth,
    )

    written = [write_json(out / "tree_stats.json", summary)]
    suffix = f" — {title}" if title else ""
    fig = plot_size_depth(summary["sizes"], summary["depths"], title=f"attribution trees{suffix}")
    written += save_figure(fig, out / "tree_size_depth")
    fig = plot_receptive_field(
        summary["receptive_field"],
        title=f"receptive field of tree edges{suffix}",
        reference=summary.get("random_pair_distance"),
    )
    written += save_figure(fig, out / "receptive_field")
    if "faithfulness" in summary:
        fig = plot_faithfulness(summary["faithfulness"], title=f"edge faithfulness{suffix}")
        written += save_figure(fig, out / "faithfulness")
    if "segments" in summary:
        split = summary["segments"]
        fig = plot_segment_split(
            split, title=f"tree edges of sentence pairs{suffix}", segment_names=split.get("names")
        )
        written += save_figure(fig, out / "segment_split")
    return written


def _print_summary(summary: dict[str, Any], title: str) -> None:
    from rich.table import Table

    def fmt(x):
        return "–" if x is None else f"{x:.2f}"

    console.print(title, markup=False)
    s, d, f = summary["size"], summary["depth"], summary["fraction_of_tokens_in_tree"]
    console.print(
        f"tree size: mean {fmt(s['mean'])}, median {fmt(s['median'])}, range {s['min']:.0f}–{s['max']:.0f} tokens; "
        f"depth: mean {fmt(d['mean'])}, range {d['min']:.0f}–{d['max']:.0f}; "
        f"share of tokens in the tree: {fmt(f['mean'])}",
        markup=False,
    )
    table = Table(title="receptive field (tree edges)", title_justify="left")
    table.add_column("layer", justify="right")
    table.add_column("edges", justify="right")
    table.add_column("mean |i − j|", justify="right")
    for row in summary["receptive_field"]:
        table.add_row(str(row["layer"]), str(row["edges"]), fmt(row["mean_distance"]))
    console.print(table)
    if "segments" in summary:
        _print_segment_split(summary["segments"])
    faith = summary.get("faithfulness")
    if faith:
        table = Table(
            title="edge faithfulness: mean drop of F after zeroing k connections", title_justify="left"
        )
        table.add_column("k", justify="right")
        for name in faith["methods"]:
            table.add_column(name, justify="right")
        for pos, k in enumerate(faith["k"]):
            table.add_row(str(k), *[f"{c['mean_drop'][pos]:.4f}" for c in faith["methods"].values()])
        console.print(table)


def _print_segment_split(split: dict[str, Any]) -> None:
    """The within / cross / special split of tree edges, overall and per layer."""
    from rich.table import Table

    from ..analyses.tree.build import segment_name

    names = split.get("names")
    first, second = segment_name(0, names), segment_name(1, names)

    def share(count, fraction):
        return f"{count} ({'–' if fraction is None else f'{100 * fraction:.0f}%'})"

    def dist(x):
        return "–" if x is None else f"{x:.2f}"

    table = Table(
        title=f"tree edges of sentence pairs ({split['pair_examples']} pairs)", title_justify="left"
    )
    for name in ("layer", "edges", "within", "cross", "special", "|i − j| within", "|i − j| cross"):
        table.add_column(name, justify="right")
    rows = [(str(r["layer"]), r, r["fractions"], r["mean_distance"]) for r in split["per_layer"]]
    overall = {**split["edges"], "edges": split["edges"]["total"]}
    rf = split["receptive_field"]
    rows.append(("all", overall, split["fractions"], {k: v["mean_distance"] for k, v in rf.items()}))
    for layer, counts, fractions, distances in rows:
        table.add_row(
            layer,
            str(counts["edges"]),
            *[share(counts[k], fractions[k]) for k in ("within", "cross", "special")],
            dist(distances["within"]),
            dist(distances["cross"]),
        )
    console.print(table)
    ways = split["cross_direction"]
    notes = [
        f"cross-segment edges: {second} → {first} {ways['pair_reads_text']}, "
        f"{first} → {second} {ways['text_reads_pair']} (an edge {second} → {first}: a {second} token "
        f"reads a {first} token); edges touching [CLS] or a separator count as special",
        f"{split['examples_with_cross_edge']} of {split['examples']} trees have a cross-segment edge",
    ]
    if split["examples_without_segment_ids"]:
        notes.append(
            f"{split['examples_without_segment_ids']} records of an older run have no segment ids "
            "and are left out of this table"
        )
    console.print("; ".join(notes), markup=False)
