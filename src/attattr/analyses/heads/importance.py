"""Dataset-level head importance by any registered method (`attattr.methods`), as a resumable run.

Each example's record (its own `[layers, heads]` table, or what the method needs) is appended to
the run's store as soon as its shard finishes; the importance is merged from the stored records
only, so an interrupted and resumed run ends with exactly the numbers of an uninterrupted one.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...core.errors import InputError
from ...core.hooks import model_num_heads, model_num_layers
from ...core.quadrature import integration_settings, summarise_integration
from ...methods import Importance, get_method
from ...methods.base import check_prompts, is_decoder, prompt_metric
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

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

KIND = "heads.importance"
ProgressFn = Callable[[int], None]
StoreArg = MemoryStore | str | os.PathLike | None


def select_examples(examples: Sequence, count: int | None, *, seed: int | None = 0) -> list:
    """`count` examples of a split: a seeded random sample kept in split order (seed=None: the first
    `count`). The built-in splits list examples in source order, which is sorted by label, so the
    first N of a split can all have the same label."""
    items = list(examples)
    if count is None or count >= len(items):
        return items
    if count < 0:
        raise InputError(f"the number of examples must be >= 0, got {count}")
    if seed is None:
        return items[:count]
    chosen = sorted(random.Random(int(seed)).sample(range(len(items)), count))
    return [items[i] for i in chosen]


def check_importance_options(
    method: str,
    *,
    steps: int | str | None = None,
    rule: str | None = None,
    tol: float | None = None,
    dtype: str | None = None,
    preset: str | None = None,
    fast: bool = False,
    batch_size: int = 8,
    eval_batch_size: int = 64,
) -> dict[str, Any] | None:
    """Refuse a bad method or setting before any work (InputError). Returns the integration a
    method that integrates runs (`integration_settings` of the pruning protocol), else None."""
    m = get_method(method)
    integration = None
    if m.integration:
        integration = integration_settings(
            steps=steps, rule=rule, tol=tol, dtype=dtype, preset=preset, fast=fast, analysis="pruning"
        )
    check_count(batch_size, "batch size")
    check_count(eval_batch_size, "evaluation batch size")
    return integration


def integration_info(integration: Mapping[str, Any]) -> dict[str, Any]:
    """The integration as a run's settings record it: steps, rule, dtype ("float32" by default),
    and tol in the error-controlled mode. A fixed rule's entries are those runs recorded before
    the default changed, so that their run files keep their names."""
    info = {
        "steps": integration["steps"],
        "rule": integration["rule"],
        "dtype": integration["dtype"] or "float32",
    }
    if integration.get("tol") is not None:
        info["tol"] = integration["tol"]
    return info


def importance_job(
    method: str,
    examples: Sequence[RunExample],
    *,
    batch_size: int,
    steps: int | str | None = None,
    rule: str | None = None,
    tol: float | None = None,
    dtype: str | None = None,
    preset: str | None = None,
    eval_batch_size: int = 64,
    memory_budget: int | None = None,
    context: Mapping[str, Any] | None = None,
    metric: str | None = None,
) -> Job:
    """The job of one method over `examples`: its settings (the run file's header) are what the
    numbers depend on, `context` (model, data, split, ...) included; `metric`: a causal LM's.
    The integration options mean what they mean to `head_importance`."""
    settings: dict[str, Any] = {"method": method, **(context or {}), "examples": [x.id for x in examples]}
    if metric is not None:
        settings["metric"] = metric
    settings["batch_size"] = batch_size
    integration = check_importance_options(
        method, steps=steps, rule=rule, tol=tol, dtype=dtype, preset=preset, batch_size=batch_size
    )
    if integration is not None:
        settings.update(integration_info(integration))
    return Job(KIND, settings, {"eval_batch_size": eval_batch_size, "memory_budget": memory_budget})


@register_shard_function(KIND)
def importance_shard(model, tokenizer, examples: Sequence[RunExample], job: Job) -> list[dict[str, Any]]:
    method = get_method(job.settings["method"])
    return method.records(model, tokenizer, examples, {**job.settings, **job.options})


def store_for(
    job: Job, store: StoreArg, runs_dir: str | os.PathLike | None, name: str, fresh: bool
) -> MemoryStore:
    """`store` itself, a RunStore at the path `store`, a settings-named file in `runs_dir`, or memory."""
    if isinstance(store, MemoryStore):
        return store
    if store is not None:
        return open_store(job, path=Path(store), fresh=fresh)
    return open_store(job, folder=runs_dir, name=name, fresh=fresh)


def run_examples(
    model: PreTrainedModel, examples: Iterable, metric: str | None, *, need_labels: bool = True
) -> tuple[list[RunExample], str | None]:
    """The examples of a run and its metric. A causal LM: prompts that all have targets, scored by
    `metric` (default by their targets). A classifier: examples with labels within its classes
    (all labelled when `need_labels`); no metric."""
    if is_decoder(model):
        items = as_examples(examples)
        check_prompts(items)
        return items, prompt_metric(items, metric)
    return as_examples(examples, need_labels=need_labels, num_labels=model.config.num_labels), None


def head_importance(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    examples: Iterable | None,
    method: str = "attattr",
    *,
    batch_size: int = 8,
    steps: int | str | None = None,
    rule: str | None = None,
    tol: float | None = None,
    dtype: str | None = None,
    preset: str | None = None,
    memory_budget: int | None = None,
    seed: int = 0,
    eval_batch_size: int = 64,
    store: StoreArg = None,
    runs_dir: str | os.PathLike | None = None,
    fresh: bool = False,
    on_example: ProgressFn | None = None,
    settings: dict[str, Any] | None = None,
    executor: Executor | None = None,
    model_source: str | None = None,
    metric: str | None = None,
) -> Importance:
    """Dataset-level head importance by `method` (see `attattr.methods`).

    examples: `attattr.data.Example`s (id, text, text_pair, label), texts or tuples; labels are
        needed by attattr, taylor and accuracy-diff; ignored by random (examples may be None).
        A causal LM takes prompts with targets (`attattr.prompts.PromptExample`s, e.g. the `ioi`
        set) and scores them by `metric` ("logit-diff", "prob-diff", "logprob"; default by the
        prompts' targets) in place of the gold label's probability (docs/decoders.md).
    batch_size: examples per shard (attattr: per engine call; taylor/attention: per forward).
    steps, rule, tol, dtype, memory_budget: the engine's integration options (attattr only), as
        `attattr.attribute` reads them: by default the error-controlled mode (steps="auto", tol
        `quadrature.DEFAULT_TOL`); steps=N alone: right Riemann with N nodes; a rule alone: 20 nodes.
    preset: "paper" (right Riemann, 20 steps, fp32: the same as steps=20, rule="riemann-right")
        or "authors" (the authors' released code for the pruning importance: left Riemann, 20
        steps, fp32); other options may repeat what it fixes, not contradict it.
    store / runs_dir / fresh: where records go and resume from: a store or a run-file path; or a
        folder where the file is named by the run's settings (`importance-<method>-<hash>.jsonl`);
        fresh=True starts over. None of them: in memory.
    settings: what else the run depends on and the result should carry (model, data, split, ...).
    executor, model_source: where shards run (default: in this process).
    """
    m = get_method(method)
    integration = check_importance_options(
        method,
        steps=steps,
        rule=rule,
        tol=tol,
        dtype=dtype,
        preset=preset,
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
    )
    context = dict(settings or {})
    num_layers, num_heads = model_num_layers(model), model_num_heads(model)
    if not m.needs_examples:
        return m.merge(
            [], num_layers=num_layers, num_heads=num_heads, settings={**context, "seed": int(seed)}
        )
    items, metric = run_examples(model, examples, metric, need_labels=m.needs_labels)
    job = importance_job(
        method,
        items,
        batch_size=batch_size,
        **(integration or {}),
        eval_batch_size=eval_batch_size,
        memory_budget=memory_budget,
        context=context,
        metric=metric,
    )
    run_store = store_for(job, store, runs_dir, f"importance-{method}", fresh)
    model.eval()
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
    info = dict(context)
    if integration is not None:
        info.update(integration_info(integration))
        nodes = summarise_integration(records, integration.get("tol"))
        if nodes is not None:
            info["integration"] = nodes
    info["batch_size"] = batch_size
    if metric is not None:
        info["metric"] = metric
    return m.merge(records, num_layers=num_layers, num_heads=num_heads, settings=info)
