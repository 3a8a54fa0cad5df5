"""Head pruning by dataset importance (docs/method.md §2b, the paper's Fig. 3): prune the p least important
heads for p = 0, 10, ..., 100 % of all heads and evaluate on a whole evaluation split, for each
importance method (random: the mean over seeds). A causal LM is evaluated on prompts by their
metric (mean logit difference, ...; accuracy: the metric above 0)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ...core.encoding import predict, predict_prompts, token_count
from ...core.errors import InputError
from ...core.hooks import model_num_heads, model_num_layers
from ...methods import Importance, get_method
from ...methods.base import is_decoder
from ...methods.gates import mask_key
from ..runs import Executor, Job, check_count
from .importance import (
    ProgressFn,
    StoreArg,
    check_importance_options,
    head_importance,
    integration_info,
    run_examples,
    store_for,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

KIND = "heads.pruning"
FRACTIONS = tuple(i / 10 for i in range(11))
# progress(label, total) -> a context manager that yields advance(n)
ProgressFactory = Callable[[str, int], AbstractContextManager[ProgressFn | None]]


def pruning_curves(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    eval_examples: Iterable,
    importances: dict[str, Importance],
    *,
    fractions: Sequence[float] = FRACTIONS,
    eval_batch_size: int = 64,
    store: StoreArg = None,
    runs_dir: str | os.PathLike | None = None,
    fresh: bool = False,
    settings: dict[str, Any] | None = None,
    on_evaluation: ProgressFn | None = None,
    metric: str | None = None,
) -> dict[str, Any]:
    """Prune the p least important heads (p = fraction of all heads) and evaluate on `eval_examples`.

    importances: label -> Importance; labels "random-<seed>" ... are summarised together as
        "random" (mean and standard deviation over seeds).
    Evaluations are keyed by the set of pruned heads, so identical sets (p = 0, p = 100 %) run once;
    store / runs_dir / fresh (file `prune-eval-<hash>.jsonl`) make the run resumable.
    Returns {"fractions", "counts", "methods": {method: {"accuracy", "probability"[, "accuracy_std",
    "seeds"]}}, "full_accuracy", ...}.
    A causal LM: prompts with targets scored by `metric` (default by their targets): each method
    has "metric" (the mean over prompts) in place of "probability", and the result names it.
    """
    check_count(eval_batch_size, "evaluation batch size")
    decoder = is_decoder(model)
    items, metric = run_examples(model, eval_examples, metric)
    num_layers, num_heads = model_num_layers(model), model_num_heads(model)
    total = num_layers * num_heads
    for f in fractions:
        if not 0.0 <= f <= 1.0:
            raise InputError(f"pruning fractions must lie in [0, 1], got {f}")
    counts = [int(round(f * total)) for f in fractions]
    for label, imp in importances.items():
        _check_shape(label, imp, num_layers, num_heads)
    job = Job(
        KIND,
        {
            **(settings or {}),
            "eval_examples": [x.id for x in items],
            "eval_order": "by-length",
            "total_heads": total,
            **({"metric": metric} if metric is not None else {}),
        },
    )
    run_store = store_for(job, store, runs_dir, "prune-eval", fresh)
    model.eval()
    # predict in order of length (less padding per batch); only means are kept, so order is free
    by_length = sorted(items, key=lambda x: token_count(tokenizer, x.text, x.text_pair))
    texts = [x.text for x in by_length]
    pairs = [x.text_pair for x in by_length]
    pairs_arg = pairs if any(p is not None for p in pairs) else None
    labels = torch.tensor([x.label if x.label is not None else -1 for x in by_length])
    value_key = "metric" if decoder else "probability"

    def evaluate(gates: torch.Tensor) -> tuple[float, float]:
        """(accuracy, mean gold-label probability or mean metric) with `gates` applied."""
        if decoder:
            values, correct = predict_prompts(
                model, tokenizer, by_length, output=metric, batch_size=eval_batch_size, head_gates=gates
            )
            return float(correct.double().mean()), float(values.double().mean())
        probs = predict(model, tokenizer, texts, pairs_arg, batch_size=eval_batch_size, head_gates=gates)
        return (
            float((probs.argmax(-1) == labels).double().mean()),
            float(probs.gather(1, labels[:, None]).double().mean()),
        )

    results: dict[str, dict[str, list[float]]] = {}
    with run_store.session():
        for label, imp in importances.items():
            acc, prob = [], []
            for k in counts:
                gates = imp.prune_gates(k)
                key = mask_key(gates)
                if not run_store.done(key):
                    accuracy, value = evaluate(gates)
                    run_store.append(
                        {"id": key, "pruned": int((gates == 0).sum()), "accuracy": accuracy, value_key: value}
                    )
                record = run_store.ordered([key])[0]
                acc.append(record["accuracy"])
                prob.append(record[value_key])
                if on_evaluation is not None:
                    on_evaluation(1)
            results[label] = {"accuracy": acc, value_key: prob}

    methods: dict[str, dict[str, Any]] = {}
    random_labels = [lab for lab in results if lab == "random" or lab.startswith("random-")]
    for label, values in results.items():
        if label not in random_labels:
            methods[label] = values
    if random_labels:
        acc = np.array([results[lab]["accuracy"] for lab in random_labels])
        prob = np.array([results[lab][value_key] for lab in random_labels])
        methods["random"] = {
            "accuracy": acc.mean(0).tolist(),
            value_key: prob.mean(0).tolist(),
            "accuracy_std": acc.std(0).tolist(),
            f"{value_key}_std": prob.std(0).tolist(),
            "seeds": random_labels,
            "per_seed": {lab: results[lab] for lab in random_labels},
        }
    x = np.asarray(fractions, dtype=np.float64)
    span = x[-1] - x[0] if len(x) > 1 else 1.0
    return {
        "kind": "pruning",
        **(
            {"metric": metric, f"mean_{value_key}": _mean_area(methods, value_key, x, span)}
            if decoder
            else {}
        ),
        "fractions": list(fractions),
        "counts": counts,
        "total_heads": total,
        "eval_examples": len(items),
        "methods": methods,
        "mean_accuracy": {m: float(np.trapezoid(v["accuracy"], x) / span) for m, v in methods.items()},
    }


def _check_shape(label: str, imp: Importance, num_layers: int, num_heads: int) -> None:
    if (imp.num_layers, imp.num_heads) != (num_layers, num_heads):
        raise InputError(
            f"importance {label!r} is for {imp.num_layers}x{imp.num_heads} heads, "
            f"the model has {num_layers}x{num_heads}"
        )


def _mean_area(methods: dict[str, dict[str, Any]], key: str, x: np.ndarray, span: float) -> dict[str, float]:
    """Per method, the mean of `key` over the pruned fractions (area under the curve / span)."""
    return {m: float(np.trapezoid(v[key], x) / span) for m, v in methods.items()}


@contextlib.contextmanager
def _no_progress(label: str, total: int) -> Iterator[None]:
    yield None


def check_pruning_options(methods: Sequence[str], *, seeds: int, **importance_options: Any) -> None:
    """Refuse unknown methods and bad settings before any work (InputError)."""
    if not methods:
        raise InputError("no importance method given")
    for method in methods:
        check_importance_options(method, **importance_options)
    check_count(seeds, "the number of random seeds")


def prune_experiment(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    importance_examples: Iterable,
    eval_examples: Iterable,
    methods: Sequence[str],
    *,
    seeds: int = 5,
    fractions: Sequence[float] = FRACTIONS,
    batch_size: int = 8,
    eval_batch_size: int = 64,
    steps: int | str | None = None,
    rule: str | None = None,
    tol: float | None = None,
    dtype: str | None = None,
    preset: str | None = None,
    memory_budget: int | None = None,
    runs_dir: str | os.PathLike | None = None,
    fresh: bool = False,
    context: dict[str, Any] | None = None,
    importance_context: dict[str, Any] | None = None,
    eval_context: dict[str, Any] | None = None,
    progress: ProgressFactory = _no_progress,
    executor: Executor | None = None,
    model_source: str | None = None,
    metric: str | None = None,
    given: Mapping[str, Importance] | None = None,
) -> tuple[dict[str, Any], dict[str, Importance]]:
    """The whole Fig. 3 experiment: every method's importance over `importance_examples`
    (random: `seeds` seeds, labelled "random-<seed>"), then the pruning curves on `eval_examples`.
    given: importances already computed (label -> Importance, e.g. saved files); a method of
    `methods` with a given importance of the same label is not computed again.

    context: what identifies the model and data (model_id, data); importance_context / eval_context:
    what identifies each set (split, sample). executor, model_source: where the importance shards
    run (the pruned evaluations run here). metric: a causal LM's (default by the prompts' targets),
    for importance and evaluation alike. steps, rule, tol, dtype, preset: the integration of the
    methods that integrate, as for `head_importance` (default: the error-controlled mode; preset
    "paper" = steps=20, rule="riemann-right"). Returns (result, importances by label)."""
    check_pruning_options(
        methods,
        seeds=seeds,
        steps=steps,
        rule=rule,
        tol=tol,
        dtype=dtype,
        preset=preset,
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
    )
    integration = check_importance_options(
        "attattr", steps=steps, rule=rule, tol=tol, dtype=dtype, preset=preset
    )
    options = dict(**integration, batch_size=batch_size, eval_batch_size=eval_batch_size)
    context = dict(context or {})
    importance_examples = list(importance_examples)
    started = time.perf_counter()
    importances: dict[str, Importance] = {}
    given = dict(given or {})
    for label, imp in given.items():  # before any work
        _check_shape(label, imp, model_num_layers(model), model_num_heads(model))
    for method in methods:
        if method in given:  # saved before (an expensive method run once, on fewer examples)
            importances[method] = given[method]
            continue
        needs_examples = get_method(method).needs_examples
        for seed in range(seeds) if not needs_examples else [0]:
            t0 = time.perf_counter()
            shown = progress if needs_examples else _no_progress  # random: nothing to wait for
            with shown(f"importance ({method})", len(importance_examples)) as advance:
                imp = head_importance(
                    model,
                    tokenizer,
                    importance_examples if needs_examples else None,
                    method,
                    seed=seed,
                    memory_budget=memory_budget,
                    runs_dir=runs_dir,
                    fresh=fresh,
                    on_example=advance,
                    executor=executor,
                    model_source=model_source,
                    metric=metric,
                    settings={
                        "kind": "importance",
                        "method": method,
                        **context,
                        **(importance_context or {}),
                    },
                    **options,
                )
            imp.settings["seconds"] = round(time.perf_counter() - t0, 2)
            importances[method if needs_examples else f"random-{seed}"] = imp
    importances.update(given)  # the given ones not among `methods` go last
    importance_seconds = time.perf_counter() - started
    with progress("evaluating pruned models", len(importances) * len(fractions)) as advance:
        result = pruning_curves(
            model,
            tokenizer,
            eval_examples,
            importances,
            fractions=fractions,
            eval_batch_size=eval_batch_size,
            runs_dir=runs_dir,
            fresh=fresh,
            settings={"kind": "pruning", **context, **(eval_context or {})},
            on_evaluation=advance,
            metric=metric,
        )
    computed = [i for label, i in importances.items() if label not in given]
    imp_count = next((len(i.example_ids) for i in computed if i.example_ids), 0)
    given_counts = {label: len(imp.example_ids) for label, imp in sorted(given.items())}
    result["settings"] = {
        **context,
        **(eval_context or {}),
        **{f"importance_{k}": v for k, v in (importance_context or {}).items()},
        "importance_examples": imp_count,
        **({"given_importance": given_counts} if given_counts else {}),
        "seeds": seeds,
        "batch_size": batch_size,
        **integration_info(integration),
    }
    result["seconds"] = {
        "importance": {k: v.settings.get("seconds") for k, v in importances.items()},
        "importance_total": round(importance_seconds, 2),
        "evaluation": round(time.perf_counter() - started - importance_seconds, 2),
    }
    return result, importances
