"""Analyses built on attribution trees over a dataset (docs/method.md §3).

* tree size and depth distributions;
* receptive field: per layer, the mean token distance |i - j| of tree edges;
* sentence pairs: tree edges split into within-segment, cross-segment and special-token edges
  (`AttributionTree.edge_kind`), per layer, with the direction and token distance of cross edges;
* edge faithfulness: zero the top-k attention connections (entries (layer, head, i, j) of the
  attention probabilities) chosen by attribution score, by attention weight and at random, and
  record the model output F (the attribution's own target and output) against k.

A zeroed connection is multiplied by 0 without renormalising its row, the same convention as head
pruning: the query token simply stops receiving that key's value through that head.

A dataset run goes through the dataset runner (`attattr.analyses.runs`, job kind "tree.stats"):
one record per example (its tree edges, sizes and faithfulness curves, no tensors), appended to the
run file as soon as its shard finishes, so that an interrupted run resumes; `summarise` merges the
records into the summary.
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ...core.encoding import encode_batch, model_inputs, model_max_length
from ...core.errors import InputError
from ...core.hooks import AttentionHook, ConnectionGate
from ...core.objectives import class_values
from ...core.quadrature import integration_record, integration_settings, summarise_integration
from ...core.result import Attribution
from ..runs import (
    Executor,
    Job,
    MemoryStore,
    RunExample,
    as_examples,
    check_count,
    open_store,
    register_shard_function,
    run,
)
from .build import (
    CROSS_EDGE,
    PARENT_CHOICES,
    SPECIAL_EDGE,
    WITHIN_EDGE,
    AttributionTree,
    build_tree,
    check_threshold,
    classify_edge,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_KS = (0, 1, 2, 5, 10, 20, 50)
# "-nonroot": the same ranking restricted to connections outside the root's query row, i.e. to the
# connections attribution trees are built from (the root row holds most of the top attributions)
METHODS = ("attribution", "attention", "random", "attribution-nonroot", "attention-nonroot")
KIND = "tree.stats"
RUN_NAME = "tree-stats"  # run files: <runs_dir>/tree-stats-<hash of the settings>.jsonl
# attribution options that change how the work runs, not the numbers: left out of the run's header
RUNTIME_OPTIONS = ("memory_budget",)
# gate tensors per pass stay under this many bytes ([rows, heads, n, n] float32 per layer)
GATE_BYTES = 256 * 2**20


def output_of(logits: torch.Tensor, target: int, output: str) -> torch.Tensor:
    """F per row from logits `[rows, classes]`: the target's probability, logit or log-probability."""
    return class_values(logits, target, output)


def rankings(
    attr: Attribution, *, seeds: int = 3, methods: Sequence[str] = METHODS, salt: str = ""
) -> dict[str, list[np.ndarray]]:
    """Connection orders (flat indices into `[layers, heads, n, n]`, strongest first) per method.

    attribution: descending signed attribution score; attention: descending attention weight;
    random: one permutation per seed (seeded by the seed and `salt`, e.g. the example id)."""
    out: dict[str, list[np.ndarray]] = {}
    for method in methods:
        if method in ("attribution", "attribution-nonroot"):
            out[method] = [_descending(attr.scores, skip_root_row=method.endswith("nonroot"))]
        elif method in ("attention", "attention-nonroot"):
            out[method] = [_descending(attr.attentions, skip_root_row=method.endswith("nonroot"))]
        elif method == "random":
            total = attr.scores.numel()
            out[method] = [
                np.random.default_rng([seed, zlib.crc32(salt.encode())]).permutation(total)
                for seed in range(seeds)
            ]
        else:
            raise InputError(f"unknown connection ranking {method!r}; choose from {', '.join(METHODS)}")
    return out


def _descending(values: torch.Tensor, *, skip_root_row: bool = False, root: int = 0) -> np.ndarray:
    """Flat indices of `values` [layers, heads, n, n], largest first (root-row entries left out)."""
    values = values.detach().double().cpu()
    order = np.argsort(-values.flatten().numpy(), kind="stable")
    if skip_root_row:
        n = values.shape[-1]
        query = (order // n) % n
        order = order[query != root]
    return order


@torch.no_grad()
def connection_faithfulness(
    model,
    tokenizer,
    attr: Attribution,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    seeds: int = 3,
    methods: Sequence[str] = METHODS,
    salt: str | None = None,
) -> dict[str, Any]:
    """F after zeroing the top-k connections of each ranking, for every k.

    Returns {"k": [...], "f0": F with nothing zeroed, "methods": {name: [[F_k for k] per seed]}}
    (one list for attribution and attention, `seeds` lists for random)."""
    ks = _check_ks(ks)
    device = next(model.parameters()).device
    enc, _ = encode_batch(
        tokenizer,
        [attr.text],
        [attr.text_pair],
        max_length=model_max_length(model, tokenizer),
        device=device,
    )
    ids = enc["input_ids"][0].tolist()
    if ids != list(attr.token_ids):
        raise InputError(
            "the attribution's tokens differ from this tokenizer's encoding of its text "
            f"(attribution model {attr.model_id!r})"
        )
    L, H, n, _ = attr.scores.shape
    order = rankings(attr, seeds=seeds, methods=methods, salt=salt if salt is not None else attr.text)
    total = L * H * n * n

    # one gate row per (method, seed, k > 0), plus the untouched row
    rows: list[tuple[str, int, int]] = [("none", 0, 0)]
    for method, perms in order.items():
        for s in range(len(perms)):
            rows += [(method, s, k) for k in ks if k > 0]
    gate_rows = np.ones((len(rows), total), dtype=np.float32)
    for r, (method, s, k) in enumerate(rows):
        if k > 0:
            gate_rows[r, order[method][s][: min(k, total)]] = 0.0
    gate_rows = gate_rows.reshape(len(rows), L, H, n, n)

    values = np.empty(len(rows))
    per_pass = max(1, GATE_BYTES // max(1, L * H * n * n * 4))
    inputs = model_inputs(enc, model)
    gate = ConnectionGate()
    with AttentionHook(model, edits=[gate]):
        for start in range(0, len(rows), per_pass):
            stop = min(start + per_pass, len(rows))
            gates = torch.from_numpy(gate_rows[start:stop])
            gate.gates = {layer: gates[:, pos].to(device) for pos, layer in enumerate(attr.layers)}
            batch = {k: v.expand(stop - start, *v.shape[1:]) for k, v in inputs.items()}
            logits = model(**batch).logits
            values[start:stop] = output_of(logits, attr.target, attr.output).cpu().double().numpy()

    result: dict[str, Any] = {"k": list(ks), "f0": float(values[0]), "methods": {}}
    lookup = {row: values[r] for r, row in enumerate(rows)}
    for method, perms in order.items():
        result["methods"][method] = [
            [float(values[0]) if k == 0 else float(lookup[(method, s, k)]) for k in ks]
            for s in range(len(perms))
        ]
    return result


def _check_ks(ks: Sequence[int]) -> list[int]:
    try:
        ks = sorted({int(k) for k in ks})
    except (TypeError, ValueError):
        raise InputError(f"k values must be integers, got {ks!r}") from None
    if not ks or ks[0] < 0:
        raise InputError(f"k values must be non-negative integers, got {ks!r}")
    if ks[0] != 0:
        ks = [0, *ks]
    return ks


def example_record(attr: Attribution, tree: AttributionTree, faith: dict[str, Any] | None) -> dict[str, Any]:
    """What the run file keeps per example (compact: no tensors)."""
    return {
        "id": attr.example_id,
        "n": attr.num_tokens,
        "size": tree.size,
        "depth": tree.depth,
        "top": tree.top,
        "top_token": tree.tokens[tree.top] if tree.top is not None else None,
        "edges": [[e.parent, e.child, e.layer, e.score] for e in tree.attention_edges()],
        "predicted": attr.predicted,
        "label": attr.label,
        "target": attr.target,
        "output_value": attr.output_value,
        "faithfulness": faith,
        # what classifies the edges (within / cross segment / special); runs before these keys
        # existed lack them and count as single-segment
        "root": tree.root,
        "segment_ids": [int(s) for s in tree.segment_ids],
        "special": [i for i, special in enumerate(tree.special_mask) if special],
    }


def check_tree_stats_options(
    *,
    threshold: float = 0.4,
    ks: Sequence[int] = DEFAULT_KS,
    seeds: int = 3,
    methods: Sequence[str] = METHODS,
    parent_choice: str = "strongest",
    batch_size: int = 8,
) -> tuple[float, list[int]]:
    """Refuse bad settings before any work (InputError); returns the threshold and the k values."""
    threshold = check_threshold(threshold)
    ks = _check_ks(ks)
    check_count(seeds, "seeds")
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise InputError(
            f"unknown connection ranking {unknown or methods!r}; choose from {', '.join(METHODS)}"
        )
    if parent_choice not in PARENT_CHOICES:
        raise InputError(f"parent_choice must be one of {', '.join(PARENT_CHOICES)}, got {parent_choice!r}")
    check_count(batch_size, "batch size")
    return threshold, ks


@register_shard_function(KIND)
def tree_stats_shard(model, tokenizer, examples: Sequence[RunExample], job: Job) -> list[dict[str, Any]]:
    """Per example of the shard: its attribution (one engine call for the shard), its tree and,
    when asked, its faithfulness curves; kept as `example_record`s."""
    from ...core import engine  # looked up at call time (tests count the engine's calls)

    s = job.settings
    options = {**s["attribution"], **{k: v for k, v in job.options.items() if v is not None}}
    records = []
    for attr in engine.attribute_many(model, tokenizer, examples, batch_size=len(examples), **options):
        tree = build_tree(attr, s["threshold"], parent_choice=s["parent_choice"])
        faith = None
        if s["faithfulness"]:
            faith = connection_faithfulness(
                model,
                tokenizer,
                attr,
                ks=s["ks"],
                seeds=s["seeds"],
                methods=s["methods"],
                salt=str(attr.example_id),
            )
        record = example_record(attr, tree, faith)
        nodes = integration_record(attr)
        if nodes is not None:  # the error-controlled mode: nodes per layer, layers that missed tol
            record["integration"] = nodes
        records.append(record)
    return records


def run_tree_stats(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Iterable,
    *,
    threshold: float = 0.4,
    ks: Sequence[int] = DEFAULT_KS,
    seeds: int = 3,
    faithfulness: bool = True,
    methods: Sequence[str] = METHODS,
    parent_choice: str = "strongest",
    store: MemoryStore | str | os.PathLike | None = None,
    runs_dir: str | os.PathLike | None = None,
    fresh: bool = False,
    settings: dict[str, Any] | None = None,
    batch_size: int = 8,
    on_example: Callable[[int], None] | None = None,
    executor: Executor | None = None,
    model_source: str | None = None,
    **attr_options: Any,
) -> dict[str, Any]:
    """Trees (and faithfulness curves) for every example; returns the summary (see `summarise`).

    examples: `attattr.data.Example`s (their ids key the run file), texts or tuples.
    store / runs_dir / fresh: a store or a run-file path; or a folder where the run file is named by
        the settings (`tree-stats-<hash>.jsonl`); fresh=True starts over. None of them: in memory.
    settings: extra settings recorded with the run (model and data names, ...).
    executor, model_source: where shards run (default: in this process).
    attr_options: passed to `attattr.attribute_many` (target, output, steps, rule, tol, dtype, ...).
        The integration options (steps, rule, tol, dtype, preset, fast) mean what they mean there:
        by default the error-controlled mode (steps="auto", tol `quadrature.DEFAULT_TOL`); preset
        "paper" is steps=20, rule="riemann-right", "authors" steps=64, rule="riemann-left". They
        are recorded as `quadrature.integration_settings` writes them (float32 left out), so that
        the same integration given either way names the same run file."""
    attr_options = _integration_options(attr_options)
    threshold, ks = check_tree_stats_options(
        threshold=threshold,
        ks=ks,
        seeds=seeds,
        methods=methods,
        parent_choice=parent_choice,
        batch_size=batch_size,
    )
    items = as_examples(examples, need_labels=attr_options.get("target") == "gold")
    run_settings = {
        "threshold": threshold,
        "ks": ks,
        "seeds": seeds,
        "faithfulness": faithfulness,
        "methods": list(methods) if faithfulness else [],
        "parent_choice": parent_choice,
        **{k: _plain_setting(v) for k, v in attr_options.items()},
        **(settings or {}),
    }
    attribution = {k: _plain_setting(v) for k, v in attr_options.items() if k not in RUNTIME_OPTIONS}
    job = Job(
        KIND,
        {
            **{k: v for k, v in run_settings.items() if k not in attr_options},
            "attribution": attribution,
            "examples": [x.id for x in items],
            "batch_size": batch_size,
        },
        {k: attr_options[k] for k in RUNTIME_OPTIONS if k in attr_options},
    )
    if isinstance(store, MemoryStore):
        run_store = store
    elif store is not None:
        run_store = open_store(job, path=store, fresh=fresh)
    else:
        run_store = open_store(job, folder=runs_dir, name=RUN_NAME, fresh=fresh)
    records = run(
        job,
        items,
        model=model,
        tokenizer=tokenizer,
        store=run_store,
        executor=executor,
        batch_size=batch_size,
        progress=on_example,
        model_source=model_source,
    )
    num_layers = _num_layers(model, attr_options.get("layers"))
    summary = summarise(records, layers=num_layers, output=attr_options.get("output", "prob"))
    summary["settings"] = run_settings
    nodes = summarise_integration(records, attr_options.get("tol"))
    if nodes is not None:
        summary["integration"] = nodes
    return summary


INTEGRATION_OPTIONS = ("steps", "rule", "tol", "dtype", "preset", "fast")


def _integration_options(attr_options: dict[str, Any]) -> dict[str, Any]:
    """`attr_options` with its integration options in their one recorded form: steps and rule, tol
    in the error-controlled mode, dtype unless float32 (the form of earlier runs' settings)."""
    given = {k: attr_options[k] for k in INTEGRATION_OPTIONS if k in attr_options}
    resolved = integration_settings(**given, analysis="example")
    rest = {k: v for k, v in attr_options.items() if k not in INTEGRATION_OPTIONS}
    return {**{k: v for k, v in resolved.items() if v is not None}, **rest}


def _plain_setting(value):
    """A JSON-able form of an attribution option (dtypes and other objects as text)."""
    if isinstance(value, int | float | str | bool | type(None)):
        return value
    if isinstance(value, list | tuple):
        return [_plain_setting(v) for v in value]
    return str(value)


def _num_layers(model, layers) -> list[int]:
    from ...core.hooks import model_num_layers

    return sorted(layers) if layers else list(range(model_num_layers(model)))


# ---- summaries ----------------------------------------------------------------------------------------
def _describe(values: Sequence[float]) -> dict[str, float | None]:
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return {"mean": None, "median": None, "min": None, "max": None, "std": None}
    return {
        "mean": float(arr.mean()),
        "median": float(np.median(arr)),
        "min": float(arr.min()),
        "max": float(arr.max()),
        "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
    }


def _sem(arr: np.ndarray, axis: int = 0) -> np.ndarray:
    count = arr.shape[axis]
    if count < 2:
        return np.zeros(arr.shape[1 - axis] if arr.ndim == 2 else ())
    return arr.std(axis=axis, ddof=1) / math.sqrt(count)


def summarise(records: Sequence[dict[str, Any]], *, layers: Sequence[int], output: str = "prob") -> dict:
    """Distributions, receptive field per layer and mean faithfulness curves over examples."""
    sizes = [r["size"] for r in records]
    depths = [r["depth"] for r in records]
    fractions = [r["size"] / r["n"] for r in records]
    distances: dict[int, list[int]] = {layer: [] for layer in layers}
    for r in records:
        for parent, child, layer, _ in r["edges"]:
            distances.setdefault(layer, []).append(abs(parent - child))
    receptive = []
    for layer in sorted(distances):
        d = np.asarray(distances[layer], dtype=float)
        receptive.append(
            {
                "layer": layer,
                "edges": int(d.size),
                "mean_distance": float(d.mean()) if d.size else None,
                "sem": float(_sem(d[:, None])[0]) if d.size > 1 else None,
            }
        )
    summary: dict[str, Any] = {
        "examples": len(records),
        "size": {**_describe(sizes), "histogram": _histogram(sizes)},
        "depth": {**_describe(depths), "histogram": _histogram(depths)},
        "fraction_of_tokens_in_tree": _describe(fractions),
        "tokens": _describe([r["n"] for r in records]),
        "receptive_field": receptive,
        # reference: the mean |i - j| of two distinct tokens drawn at random from the same input,
        # (n + 1) / 3 for n tokens, averaged over examples
        "random_pair_distance": float(np.mean([(r["n"] + 1) / 3 for r in records])) if records else None,
        "sizes": sizes,
        "depths": depths,
    }
    faith = [r["faithfulness"] for r in records if r.get("faithfulness")]
    if faith:
        summary["faithfulness"] = _faithfulness_curves(faith, relative=output == "prob")
    split = segment_split(records, layers=layers)
    if split is not None:
        summary["segments"] = split
    return summary


SPLIT_KINDS = (WITHIN_EDGE, CROSS_EDGE, SPECIAL_EDGE)
# directions of cross-segment edges: the parent (query) of segment 1 reads a child (key) of segment 0,
# or the other way round (segment 0: the first text, e.g. the premise; 1: the pair text)
PAIR_READS_TEXT, TEXT_READS_PAIR = "pair_reads_text", "text_reads_pair"


def _record_kinds(record: dict[str, Any]) -> list[tuple[int, int, int, str]] | None:
    """(parent, child, layer, kind) of each tree edge of a record; None for records without segment
    ids (written before the split existed)."""
    segments = record.get("segment_ids")
    if segments is None:
        return None
    special = [False] * len(segments)
    for i in record.get("special", []):
        special[i] = True
    root = record.get("root", 0)
    return [
        (p, c, layer, classify_edge(p, c, root=root, special_mask=special, segment_ids=segments))
        for p, c, layer, _ in record["edges"]
    ]


def _distance(values: list[int]) -> dict[str, Any]:
    d = np.asarray(values, dtype=float)
    return {
        "edges": int(d.size),
        "mean_distance": float(d.mean()) if d.size else None,
        "sem": float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else None,
    }


def _fractions(counts: dict[str, int]) -> dict[str, float | None]:
    total = sum(counts[k] for k in SPLIT_KINDS)
    return {k: (counts[k] / total if total else None) for k in SPLIT_KINDS}


def segment_split(records: Sequence[dict[str, Any]], *, layers: Sequence[int]) -> dict[str, Any] | None:
    """Tree edges split into within-segment, cross-segment and special-token edges (kinds as in
    `AttributionTree.edge_kind`), overall and per layer, with the direction of cross edges and the mean
    token distance |i - j| of each kind. None unless some record has two segments.

    Records without segment ids (older runs) count as single-segment: they are left out of the
    counts and their number is given as `examples_without_segment_ids`."""
    classified = [(r, _record_kinds(r)) for r in records]
    if not any(kinds is not None and len(set(r["segment_ids"])) > 1 for r, kinds in classified):
        return None
    counts = dict.fromkeys(SPLIT_KINDS, 0)
    directions = {PAIR_READS_TEXT: 0, TEXT_READS_PAIR: 0}
    per_layer = {layer: {**dict.fromkeys(SPLIT_KINDS, 0), **directions} for layer in layers}
    distances: dict[str, list[int]] = {k: [] for k in SPLIT_KINDS}
    layer_distances: dict[tuple[int, str], list[int]] = {}
    used = pairs = with_cross = 0
    for record, kinds in classified:
        if kinds is None:
            continue
        used += 1
        pairs += len(set(record["segment_ids"])) > 1
        with_cross += any(kind == CROSS_EDGE for *_, kind in kinds)
        for parent, child, layer, kind in kinds:
            if kind not in counts:  # the root's link to the top node is not an attention edge
                continue
            row = per_layer.setdefault(layer, {**dict.fromkeys(SPLIT_KINDS, 0), **directions})
            counts[kind] += 1
            row[kind] += 1
            distances[kind].append(abs(parent - child))
            layer_distances.setdefault((layer, kind), []).append(abs(parent - child))
            if kind == CROSS_EDGE:
                segs = record["segment_ids"]
                way = PAIR_READS_TEXT if segs[parent] > segs[child] else TEXT_READS_PAIR
                directions[way] += 1
                row[way] += 1
    layer_rows = []
    for layer in sorted(per_layer):
        row = per_layer[layer]
        layer_rows.append(
            {
                "layer": layer,
                **row,
                "edges": sum(row[k] for k in SPLIT_KINDS),
                "fractions": _fractions(row),
                "mean_distance": {
                    k: _distance(layer_distances.get((layer, k), []))["mean_distance"] for k in SPLIT_KINDS
                },
            }
        )
    return {
        "examples": used,
        "pair_examples": pairs,
        "examples_with_cross_edge": with_cross,
        "examples_without_segment_ids": len(records) - used,
        "edges": {**counts, "total": sum(counts.values())},
        "fractions": _fractions(counts),
        "cross_direction": directions,
        "receptive_field": {k: _distance(distances[k]) for k in SPLIT_KINDS},
        "per_layer": layer_rows,
    }


def _histogram(values: Sequence[int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in sorted(values):
        out[str(v)] = out.get(str(v), 0) + 1
    return out


def _faithfulness_curves(faith: Sequence[dict[str, Any]], *, relative: bool) -> dict[str, Any]:
    ks = faith[0]["k"]
    curves: dict[str, Any] = {"k": ks, "examples": len(faith), "methods": {}}
    f0 = np.asarray([f["f0"] for f in faith])  # [examples]
    for method in faith[0]["methods"]:
        # each example's curve: the mean over its seeds (one seed for the deterministic rankings)
        values = np.asarray([np.mean(f["methods"][method], axis=0) for f in faith])  # [examples, k]
        drop = f0[:, None] - values
        entry = {
            "mean_output": values.mean(axis=0).tolist(),
            "mean_drop": drop.mean(axis=0).tolist(),
            "sem_drop": np.atleast_1d(_sem(drop)).tolist() if len(faith) > 1 else [0.0] * len(ks),
        }
        if relative:
            rel = drop / np.maximum(f0[:, None], 1e-12)
            entry["mean_relative_drop"] = rel.mean(axis=0).tolist()
            entry["sem_relative_drop"] = (
                np.atleast_1d(_sem(rel)).tolist() if len(faith) > 1 else [0.0] * len(ks)
            )
        curves["methods"][method] = entry
    curves["mean_f0"] = float(f0.mean())
    return curves
