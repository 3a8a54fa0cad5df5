"""The attribution computation (docs/method.md §1): integrated gradients over each layer's attention.

For target layer l the attention probabilities A^l are replaced by alpha * A^l. The gradient of the
output F with respect to that scaled matrix, integrated over alpha and multiplied by A^l, is the
attribution. What makes it fast without changing a number:
  * prefix reuse: the layers below l do not depend on alpha, so each pass runs them once per example
    and only forks the scaled copies at layer l (`AttentionHook.row_selections`);
  * staircase: one pass can serve several target layers; copies for a higher target are forked from
    the clean rows when the pass reaches that layer, and the clean rows are dropped after the last one;
  * one reference pass without gradients gives A for every layer, F(A) and every F(0 * A^l);
  * several examples per pass (padding masked) and a memory budget that splits the rows into passes
    (`attattr.core.planning`);
  * optional bf16 autocast (matrix products in bf16, integration accumulated in fp32).

How alpha is integrated:
  * a fixed rule (`rule=`, `steps=N`; `attattr.core.quadrature.rule`): the same nodes for every
    layer and example;
  * error-controlled (`steps="auto"`, the default): per example and per layer, subintervals of
    [0, 1] integrated with nested Gauss-Kronrod levels (`quadrature.adaptive_levels`), refined where
    the layer's estimated relative error exceeds `tol`, within a budget of subintervals. Each
    subinterval's error signals: (a) its result against its embedded lower-order rule, as the
    Frobenius norm of the difference of the scores, and (b) completeness on the subinterval: the sum
    of its scores against F(b * A^l) - F(a * A^l), which one forward row per new endpoint gives.
    A layer's estimate is the sum over its subintervals of max(||dS||_F / ||S||_F, |gap| / D), with
    D = |F(A) - F(0 A^l)| (or a tenth of the scores' absolute sum where they cancel to less), plus,
    where bf16 is used, bf16's rounding of the gradient measured against fp32 at one node.
    A layer that misses `tol` within the budget is recorded as unconverged, never silently.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from ..version import __version__
from .encoding import model_inputs, model_max_length, token_count
from .errors import InputError, ModelError
from .hooks import AttentionHook, Record, Scale, check_supported, model_num_heads, model_num_layers
from .objectives import Objective, make_objective
from .planning import (
    CPU_BUDGET_CAP,
    DEFAULT_BUDGET_FRACTION,
    activation_bytes,
    default_memory_budget,
    plan_forward_rows,
    plan_passes,
    plan_rows,
    resolve_device,
)
from .quadrature import (
    AUTO,
    DEFAULT_MAX_SUBINTERVALS,
    adaptive_levels,
    integration_settings,
    preset_options,
)
from .quadrature import rule as quadrature_rule
from .result import Attribution

__all__ = [
    "ADAPTIVE_RULE",
    "CPU_BUDGET_CAP",
    "DEFAULT_BUDGET_FRACTION",
    "activation_bytes",
    "attribute",
    "attribute_many",
    "default_memory_budget",
    "length_batches",
    "plan_passes",
    "resolve_dtype",
    "resolve_integration",
]

ADAPTIVE_RULE = "adaptive-gauss-kronrod"  # `Attribution.rule` of the error-controlled mode
# Float32 rounding of F: completeness gaps below this multiple of eps * |F| are not integration error.
GAP_NOISE = 8.0
FP32_EPS = float(torch.finfo(torch.float32).eps)
GAP_CANCELLATION = 10.0


@dataclass
class _Item:
    id: str | None
    text: str
    text_pair: str | None
    label: int | None
    target: Any = None  # a prompt's own target and foil (prompt sets; objective target "gold")
    foil: Any = None


def attribute(
    model,
    tokenizer,
    text: str,
    text_pair: str | None = None,
    *,
    label: int | None = None,
    example_id: str | None = None,
    **options,
) -> Attribution:
    """Attribution of one input. See `attribute_many` for the options."""
    item = _Item(example_id, text, text_pair, label)
    return next(iter(attribute_many(model, tokenizer, [item], batch_size=1, **options)))


def attribute_many(
    model,
    tokenizer,
    examples: Iterable,
    *,
    target: str | int | None = None,
    output: str | None = None,
    foil=None,
    per_token: bool = False,
    steps: int | str | None = None,
    rule: str | None = None,
    tol: float | None = None,
    max_subintervals: int | None = None,
    preset: str | None = None,
    layers: Sequence[int] | None = None,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    memory_budget: int | None = None,
    truncate: bool | None = None,
    batch_size: int = 8,
    model_id: str | None = None,
    label_names: Sequence[str] | None = None,
    on_example: Callable[[int], None] | None = None,
    fast: bool = False,
) -> Iterator[Attribution]:
    """Attributions of many inputs, batched; yields one `Attribution` per example in input order.

    examples: `attattr.data.Example`-like objects (id, text, text_pair, label), strings, or
        (text, text_pair) tuples.
    target: "predicted" (default), "gold" (each example's label), or a class index.
    output: the objective F, by registered name (`attattr.core.objectives.OBJECTIVES`): the target
        class's "prob" (default, as the paper), "logit" or "logprob". Causal LMs (docs/decoders.md):
        "prob", "logprob", "logit", "logit-diff" or "prob-diff" (`objectives.TokenObjective`); their
        target is "predicted" (the top next token), a token id, a continuation text, alternatives
        (a tuple) or "gold" (each prompt's own target and foil, e.g. `attattr.prompts` sets).
    foil: causal LMs: the foil of a contrastive objective (a text, a token id or alternatives).
    per_token: causal LMs: one attribution per token of a continuation target.
    truncate: cut inputs longer than the model's maximum (classifiers: by default; decoders: only
        when True, and the beginning of the prompt), or refuse them.
    steps, rule: how alpha is integrated (docs/method.md §1).
        * default (neither given) or steps="auto": error-controlled, per example and layer, to the
          relative error `tol` (default `quadrature.DEFAULT_TOL`) within `max_subintervals`
          subintervals per layer (default `quadrature.DEFAULT_MAX_SUBINTERVALS`);
        * steps=N: a fixed rule with N nodes, `rule` (default right Riemann, the paper's);
        * rule alone: that rule with `quadrature.DEFAULT_STEPS` nodes.
    preset: "paper" (right Riemann, 20 steps, fp32, the predicted class's probability, exactly the
        paper's rule) or "authors" (the authors' released code for single examples: left Riemann,
        64 steps, fp32). Other options may repeat what a preset fixes, not contradict it.
    layers: the layers to attribute (default all).
    dtype: None/"float32" (exact), "bfloat16" (autocast) or "auto": in the error-controlled mode,
        bf16 where the hardware has fast bf16 kernels, kept for a layer only where its error
        estimate stays within tol (that layer is recomputed in fp32 otherwise); with a fixed rule,
        which has no estimate, fp32.
    device: "cpu", "cuda" or "cuda:N" (the model is moved there); default the model's device.
    memory_budget: bytes a pass may use for activations (default: a fraction of the free memory
        of the device).
    fast: steps="auto" with dtype="auto".

    Each `Attribution` records, per layer, the nodes and subintervals used, the dtype, the error
    estimate and whether it converged (`Attribution.integration`).
    """
    check_supported(model)
    device = resolve_device(device)
    requested_output = output  # None: the objective's own default (decoders choose by target)
    integration, output, target = resolve_integration(
        steps=steps,
        rule=rule,
        tol=tol,
        max_subintervals=max_subintervals,
        preset=preset,
        fast=fast,
        dtype=dtype,
        output=output,
        target=target,
        device=device or _model_device(model),
    )
    objective = make_objective(
        output if preset is not None else requested_output,
        target,
        model=model,
        foil=foil,
        per_token=per_token,
    )
    output = objective.name
    num_layers, num_heads = model_num_layers(model), model_num_heads(model)
    if layers is None:
        layers = list(range(num_layers))
    else:
        layers = sorted({int(x) for x in layers})
        bad = [x for x in layers if not 0 <= x < num_layers]
        if bad or not layers:
            raise InputError(f"layers must be within 0..{num_layers - 1}, got {bad or 'none'}")
    objective.check(model)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size!r}")
    if device is not None:
        model.to(device)
    device = _model_device(model)
    model.eval()
    max_length = model_max_length(model, tokenizer)
    model_id = model_id or getattr(model.config, "_name_or_path", "") or type(model).__name__
    label_names = list(label_names) if label_names else _label_names(model)
    budget = memory_budget or default_memory_budget(device)
    settings = _Settings(objective, output, integration, layers, num_layers, num_heads, budget)

    items = [_as_item(x, i) for i, x in enumerate(examples)]
    objective.check_labels([it.label for it in items], [it.id for it in items], model)
    for it in items:
        if not isinstance(it.text, str) or not it.text.strip():
            raise InputError(f"text is empty{f' (example {it.id})' if it.id is not None else ''}")
        if it.text_pair is not None and not it.text_pair.strip():
            raise InputError(f"pair text is empty{f' (example {it.id})' if it.id is not None else ''}")
    items = objective.expand(items, tokenizer)  # decoders: targets as token ids; per-token copies

    # Sort by length inside windows to limit padding, but yield in input order.
    window = batch_size * 8
    for w0 in range(0, len(items), window):
        chunk = items[w0 : w0 + window]
        lengths = [min(token_count(tokenizer, it.text, it.text_pair), max_length) for it in chunk]
        order = sorted(range(len(chunk)), key=lambda i: lengths[i])
        done: dict[int, Attribution] = {}
        next_out = 0
        for batch_idx in length_batches(order, lengths, batch_size):
            batch = [chunk[i] for i in batch_idx]
            for i, attr in zip(
                batch_idx,
                _attribute_batch(
                    model, tokenizer, batch, settings, max_length, truncate, device, model_id, label_names
                ),
                strict=True,
            ):
                done[i] = attr
            if on_example is not None:
                on_example(len(batch))
            while next_out in done:
                yield done.pop(next_out)
                next_out += 1


# A batch is cut early where padding its members to the longest would add more than this
# fraction of work (and more than PADDING_SLACK tokens): on inputs of very different lengths,
# padding costs more than batching saves.
MAX_PADDING = 0.15
PADDING_SLACK = 32


def length_batches(order: Sequence[int], lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Consecutive runs of `order` (indices sorted by increasing length) of at most `batch_size`,
    cut where padding to the batch's longest member would add more than MAX_PADDING of the real
    tokens and more than PADDING_SLACK tokens."""
    batches: list[list[int]] = []
    current: list[int] = []
    real = 0
    for i in order:
        padding = (len(current) + 1) * lengths[i] - (real + lengths[i])  # sorted: i is the longest
        too_much = padding > MAX_PADDING * (real + lengths[i]) and padding > PADDING_SLACK
        if current and (len(current) == batch_size or too_much):
            batches.append(current)
            current, real = [], 0
        current.append(i)
        real += lengths[i]
    if current:
        batches.append(current)
    return batches


# ---- settings ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Integration:
    """How alpha is integrated, resolved from the options (`resolve_integration`)."""

    adaptive: bool
    rule: str  # a fixed rule's name, or ADAPTIVE_RULE
    steps: int | None  # a fixed rule's node count
    alphas: np.ndarray | None = None  # a fixed rule's nodes and weights
    weights: np.ndarray | None = None
    tol: float | None = None
    max_subintervals: int = DEFAULT_MAX_SUBINTERVALS
    dtype: torch.dtype | None = None  # of the gradient passes; None = fp32
    measure_bf16: bool = False  # dtype="auto", adaptive: bf16 first, fp32 for layers that miss tol


def resolve_integration(
    *,
    steps: int | str | None = None,
    rule: str | None = None,
    tol: float | None = None,
    max_subintervals: int | None = None,
    preset: str | None = None,
    fast: bool = False,
    dtype: str | torch.dtype | None = None,
    output: str | None = None,
    target: str | int | None = None,
    device: torch.device | str = "cpu",
) -> tuple[Integration, str, str | int]:
    """The integration, objective name and target the options mean; InputError on a bad or
    contradictory combination (one line). Steps, rule, tol, dtype, fast and the preset's rule mean
    what `quadrature.integration_settings` reads them as; the output, target and work cap are the
    engine's own."""
    settings = integration_settings(steps=steps, rule=rule, tol=tol, dtype=dtype, preset=preset, fast=fast)
    adaptive = settings["steps"] == AUTO
    if preset is not None:
        fixed = preset_options(preset)
        for name, value in (("output", output), ("target", target)):
            if value is not None and value != fixed[name]:
                raise InputError(
                    f"preset {preset!r} fixes {name}={fixed[name]!r}; it contradicts {name}={value!r} "
                    "(drop one of them)"
                )
        output, target = fixed["output"], fixed["target"]
    output = "prob" if output is None else output
    target = "predicted" if target is None else target
    mode = settings["dtype"]  # None (float32), "bfloat16" or "auto"
    if not adaptive:
        if max_subintervals is not None:
            raise InputError(
                f"preset {preset!r} is a fixed rule; max_subintervals applies to steps='auto' only"
                if preset is not None
                else f"max_subintervals applies to steps='auto'; with steps={settings['steps']!r} the rule is fixed"
            )
        alphas, weights = quadrature_rule(settings["rule"], settings["steps"])
        # a fixed rule has no error estimate to measure bf16 with: "auto" stays fp32
        grad_dtype = torch.bfloat16 if mode == "bfloat16" else None
        fixed_rule = Integration(
            False, settings["rule"], settings["steps"], alphas, weights, dtype=grad_dtype
        )
        return fixed_rule, output, target
    cap = DEFAULT_MAX_SUBINTERVALS if max_subintervals is None else max_subintervals
    if isinstance(cap, bool) or not isinstance(cap, int | np.integer) or cap < 1:
        raise InputError(f"max_subintervals must be an integer >= 1, got {max_subintervals!r}")
    fast_bf16 = mode == "auto" and bf16_is_fast(torch.device(device))
    grad_dtype = torch.bfloat16 if mode == "bfloat16" or fast_bf16 else None
    adaptive_rule = Integration(
        True,
        ADAPTIVE_RULE,
        None,
        tol=settings["tol"],
        max_subintervals=int(cap),
        dtype=grad_dtype,
        measure_bf16=fast_bf16,
    )
    return adaptive_rule, output, target


def _dtype_mode(dtype) -> str:
    if dtype in (None, "float32", "fp32", torch.float32):
        return "float32"
    if dtype in ("bfloat16", "bf16", torch.bfloat16):
        return "bfloat16"
    if dtype == "auto":
        return "auto"
    raise InputError(f"unknown dtype {dtype!r}; choose float32, bfloat16 or auto")


@dataclass
class _Settings:
    objective: Objective
    output: str
    integration: Integration
    layers: list[int]
    num_layers: int
    num_heads: int
    budget: int


# ---- one batch --------------------------------------------------------------------------------
def _attribute_batch(
    model, tokenizer, batch, s: _Settings, max_length, truncate, device, model_id, label_names
):
    # texts and pairs, or a decoder's prompts with the tokens its objective forces after them
    enc, truncated = s.objective.encode(
        tokenizer, batch, max_length=max_length, truncate=truncate, device=device
    )
    inputs = model_inputs(enc, model)
    mask = enc["attention_mask"]  # [B, n]
    bsz, n = mask.shape
    clean = torch.arange(bsz, device=device)
    objective, readout = s.objective, s.objective.readout(model)
    way = s.integration
    # the error-controlled mode measures against F in fp32, whatever the gradient passes use
    reference_dtype = None if way.adaptive else way.dtype

    with AttentionHook(model) as hook, _frozen(model):
        # Reference pass, no gradients: A for every layer, F(A), and F(0 * A^l) for every target layer.
        # Only the clean rows' A is kept: the baseline rows' would be (L + 1) times the memory.
        # Rows: [clean rows] + [one zeroed copy per target layer].
        recorder = Record(rows=bsz)
        hook.edits = [recorder]
        rows = bsz
        for layer in s.layers:
            hook.row_selections[layer] = torch.cat([torch.arange(rows, device=device), clean])
            hook.edits.append(Scale(layer, rows, torch.zeros(bsz), make_leaf=False))
            rows += bsz
        with torch.no_grad(), _autocast(device, reference_dtype):
            outputs = readout(model, inputs, hook)
        attentions = {layer: recorder.attentions[layer].float() for layer in s.layers}  # [B, H, n, n]
        reference = outputs.rows(slice(0, bsz))
        probabilities, predicted = objective.predictions(reference)
        targets = objective.resolve(reference, [it.label for it in batch])  # [B]
        values = objective(outputs, targets)  # [rows]
        output_values = values[:bsz]
        baselines = values[bsz:].view(len(s.layers), bsz)
        del outputs, reference, values

        passes = _Passes(model, inputs, hook, readout, objective, targets, bsz, device, s, n)
        if way.adaptive:
            integrated, records = _integrate_adaptive(passes, attentions, mask, output_values, baselines, s)
        else:
            integrated = _integrate_fixed(passes, attentions, s)
            dtype_name = _dtype_name(way.dtype)
            nodes = len(way.alphas)
            records = [
                [_record(layer, nodes, 1, dtype_name, None, None) for layer in s.layers] for _ in range(bsz)
            ]
        hook.edits = []
        hook.row_selections.clear()

    versions = _versions()
    results = []
    for b, it in enumerate(batch):
        keep = mask[b].nonzero().flatten()
        ids = enc["input_ids"][b, keep].tolist()
        att = torch.stack([attentions[layer][b] for layer in s.layers])[:, :, keep][:, :, :, keep]
        ig = torch.stack([integrated[layer][b] for layer in s.layers])[:, :, keep][:, :, :, keep]
        scores = (att * ig).cpu().contiguous()
        layer_records = records[b]
        dtypes = {r["dtype"] for r in layer_records}
        results.append(
            Attribution(
                scores=scores,
                attentions=att.cpu().contiguous(),
                tokens=tokenizer.convert_ids_to_tokens(ids),
                token_ids=ids,
                segment_ids=enc["segment_ids"][b, keep].tolist(),
                special_mask=[i in set(tokenizer.all_special_ids) for i in ids],
                layers=list(s.layers),
                target=int(targets[b]),
                target_mode=objective.target_mode,
                output=s.output,
                output_value=float(output_values[b]),
                baseline_values=[float(x) for x in baselines[:, b]],
                score_sums=[float(x) for x in scores.double().sum(dim=(1, 2, 3))],
                probabilities=[float(x) for x in probabilities[b]],
                predicted=int(predicted[b]),
                rule=way.rule,
                steps=way.steps if way.steps is not None else max(r["nodes"] for r in layer_records),
                model_id=str(model_id),
                text=it.text,
                text_pair=it.text_pair,
                label=None if it.label is None else int(it.label),
                label_names=label_names,
                example_id=it.id,
                dtype=dtypes.pop() if len(dtypes) == 1 else "mixed",
                truncated=bool(truncated[b]),
                versions=versions,
                tol=way.tol,
                integration=layer_records,
            )
        )
        objective.annotate(results[-1], b)  # decoders: the tokens F reads, the top predictions
    return results


def _record(layer, nodes, subintervals, dtype, estimate, converged) -> dict:
    return {
        "layer": int(layer),
        "nodes": int(nodes),
        "subintervals": int(subintervals),
        "dtype": dtype,
        "error_estimate": estimate,
        "converged": converged,
    }


def _dtype_name(dtype: torch.dtype | None) -> str:
    return "bfloat16" if dtype == torch.bfloat16 else "float32"


# ---- passes -----------------------------------------------------------------------------------
@dataclass
class _Group:
    """Rows forked at one layer in one pass: each row's origin example, alpha and the weight of its
    F in the summed output."""

    layer: int
    origins: torch.Tensor  # [rows] long, indices into the clean rows
    alphas: torch.Tensor  # [rows] float32
    weights: torch.Tensor  # [rows] float32


class _Passes:
    """Runs the rows of one batch through the model under the hook: gradient passes (the integrand
    at each row's alpha) and forward passes (F alone)."""

    def __init__(self, model, inputs, hook, readout, objective, targets, bsz, device, s: _Settings, n):
        self.model, self.inputs, self.hook = model, inputs, hook
        self.readout, self.objective, self.targets = readout, objective, targets
        self.bsz, self.device, self.s, self.n = bsz, device, s, n
        self.clean = torch.arange(bsz, device=device)

    def per_row_layer(self, dtype) -> int:
        return activation_bytes(self.model, self.n, dtype)

    def per_row(self) -> int:
        """Bytes the objective needs once per row (a causal LM's logits where F reads them)."""
        return self.objective.row_bytes(self.model)

    def _install(self, groups: Sequence[_Group], make_leaf: bool) -> None:
        """Rows while a pass runs: [clean rows (until the last group's layer)] + [copies, group order]."""
        hook, bsz = self.hook, self.bsz
        hook.row_selections.clear()
        hook.edits = []
        copies = 0
        last = groups[-1].layer
        for g in groups:
            keep_clean = g.layer != last
            index = [self.clean] if keep_clean else []
            index += [torch.arange(bsz, bsz + copies, device=self.device), g.origins]
            hook.row_selections[g.layer] = torch.cat(index)
            start = (bsz if keep_clean else 0) + copies
            hook.edits.append(Scale(g.layer, start, g.alphas, make_leaf=make_leaf))
            copies += int(g.origins.shape[0])

    def gradients(self, groups: Sequence[_Group], dtype: torch.dtype | None) -> list[torch.Tensor]:
        """One pass; per group, the gradient of sum(weight * F) with respect to its scaled attention:
        `[rows, heads, query, key]`, each row weight * dF(alpha A^l)/d(alpha A^l)."""
        self._install(groups, make_leaf=True)
        with torch.enable_grad():
            with _autocast(self.device, dtype):
                outputs = self.readout(self.model, self.inputs, self.hook)  # rows: the copies, in group order
            total = (self.objective(outputs, self.targets) * torch.cat([g.weights for g in groups])).sum()
        leaves = [edit.leaf for edit in self.hook.edits]
        grads = list(torch.autograd.grad(total, leaves))
        del outputs, total, leaves
        return grads

    def values(self, groups: Sequence[_Group]) -> torch.Tensor:
        """One pass without gradients, in fp32: F of every row, `[rows]` in group order."""
        self._install(groups, make_leaf=False)
        with torch.no_grad():
            outputs = self.readout(self.model, self.inputs, self.hook)
            values = self.objective(outputs, self.targets).float()
        del outputs
        return values


def _integrate_fixed(passes: _Passes, attentions, s: _Settings) -> dict[int, torch.Tensor]:
    """A fixed rule: every example and layer at the same nodes. Rows of a pass: node-major,
    example-minor, whole nodes per pass (the arithmetic of every earlier version)."""
    way, bsz, device = s.integration, passes.bsz, passes.device
    integrated = {layer: torch.zeros_like(attentions[layer]) for layer in s.layers}
    alphas = torch.tensor(way.alphas, dtype=torch.float32)
    weights = torch.tensor(way.weights, dtype=torch.float32, device=device)
    plan = plan_passes(
        s.layers,
        len(way.alphas),
        s.num_layers,
        bsz,
        passes.n,
        passes.model,
        s.budget,
        way.dtype,
        per_row=passes.per_row(),
    )
    for units in plan:
        groups = [
            _Group(
                layer,
                passes.clean.repeat(k1 - k0),
                alphas[k0:k1].repeat_interleave(bsz),
                weights[k0:k1].repeat_interleave(bsz),
            )
            for layer, k0, k1 in units
        ]
        grads = passes.gradients(groups, way.dtype)
        for (layer, k0, k1), grad in zip(units, grads, strict=True):
            integrated[layer] += grad.float().view(k1 - k0, bsz, *grad.shape[1:]).sum(0)
        del grads
    return integrated


# ---- error-controlled integration -------------------------------------------------------------
# bf16 rounding: the relative difference between bf16 and fp32 gradients at one node, times this
# factor, bounds the relative rounding error of the integral (measured on tiny models: 1.3-4x).
ROUNDING_SAFETY = 2.0
PROBE_NODE = 1  # the middle node of level 0


@dataclass
class _Leaf:
    """A subinterval [a, b] of one example's layer and what its nodes gave so far."""

    a: float
    b: float
    level: int = -1  # the level evaluated so far (-1: none)
    target: int = 0  # the level to evaluate next (HALVED: replaced by its halves)
    result: torch.Tensor | None = None  # [heads, n, n]: the level's weighted sum of gradients
    partial: torch.Tensor | None = None  # level 0 only: level 1's weights on level 0's nodes
    magnitude: float = 0.0  # sum of |weight| * ||A g|| over the result's nodes (bf16 rounding)
    partial_magnitude: float = 0.0
    error: float = 0.0  # ||A (result - embedded rule)||_F over the real tokens
    gap: float = 0.0  # |sum A result - (F(b) - F(a))| beyond float32 rounding
    eta: float = 0.0  # this leaf's share of the layer's relative error estimate
    difference: torch.Tensor | None = None  # result - embedded rule, until reduced to `error`
    # sums of the round that evaluates this leaf: result, embedded rule, level 1's partial sum
    sums: list[torch.Tensor | None] = field(default_factory=lambda: [None, None, None])
    sums_magnitude: list[float] = field(default_factory=lambda: [0.0, 0.0])


HALVED = -2


@dataclass
class _Work:
    """One example's layer under error control."""

    example: int
    position: int  # index in s.layers
    layer: int
    leaves: list[_Leaf]
    F: dict[float, float]  # alpha -> F(alpha A^l), fp32
    dtype: torch.dtype | None
    cap: int  # most subintervals
    nodes: int = 0
    estimate: float = math.inf
    rounding: float = 0.0  # bf16: the rounding part of the estimate
    probe: list[torch.Tensor | None] = field(default_factory=lambda: [None, None])  # bf16, fp32 at 0.5
    converged: bool = False
    done: bool = False


def _new_work(example: int, position: int, layer: int, f0: float, f1: float, dtype, cap: int) -> _Work:
    """A layer of an example to integrate from scratch: [0, 1] at level 0, F(0 A) and F(A) known."""
    return _Work(example, position, layer, [_Leaf(0.0, 1.0, target=0)], {0.0: f0, 1.0: f1}, dtype, cap)


def _integrate_adaptive(passes: _Passes, attentions, mask, output_values, baselines, s: _Settings):
    """Error-controlled integration of every (example, layer); returns the integrals
    {layer: [B, heads, n, n]} and per example the per-layer integration records."""
    way, bsz = s.integration, passes.bsz
    # per (example, layer): A as padded `[heads, n, n]`, A over the example's real tokens
    # `[heads, n_b, n_b]`, and the real positions (None: no padding)
    attention = {}
    for b in range(bsz):
        keep = mask[b].nonzero().flatten()
        padded = keep.numel() != mask.shape[1]
        for layer in s.layers:
            a = attentions[layer][b]
            attention[(b, layer)] = (a, a[:, keep][:, :, keep] if padded else a, keep if padded else None)

    def fresh(b: int, position: int, layer: int, dtype, cap) -> _Work:
        return _new_work(
            b, position, layer, float(baselines[position, b]), float(output_values[b]), dtype, cap
        )

    # bf16 is tried without halving (a layer that needs it is no place for bf16's rounding)
    first_cap = 1 if way.measure_bf16 else way.max_subintervals
    works = [fresh(b, p, layer, way.dtype, first_cap) for p, layer in enumerate(s.layers) for b in range(bsz)]
    # the sums of each (example, layer) live beside the passes: up to three `[heads, n, n]` tensors
    # each while a round runs; the passes get what is left of the budget (at least a quarter)
    sums = len(works) * 3 * 4 * attentions[s.layers[0]][0].numel()
    s = replace(s, budget=max(s.budget - sums, s.budget // 4))
    _run_rounds(passes, works, attention, way.tol, s)
    if way.measure_bf16:
        # layers whose estimate missed tol in bf16 are recomputed from scratch in fp32
        redo = [
            fresh(w.example, w.position, w.layer, None, way.max_subintervals)
            for w in works
            if not w.converged
        ]
        _run_rounds(passes, redo, attention, way.tol, s)
        replaced = {(w.example, w.layer): w for w in redo}
        works = [replaced.get((w.example, w.layer), w) for w in works]

    integrated = {layer: torch.zeros_like(attentions[layer]) for layer in s.layers}
    records: list[list[dict]] = [[] for _ in range(bsz)]
    for w in sorted(works, key=lambda w: (w.example, w.position)):
        for leaf in sorted(w.leaves, key=lambda leaf: leaf.a):
            integrated[w.layer][w.example] += leaf.result
        # an estimate relative to all-zero scores is not a number: recorded as None (unconverged)
        estimate = float(w.estimate) if math.isfinite(w.estimate) else None
        records[w.example].append(
            _record(w.layer, w.nodes, len(w.leaves), _dtype_name(w.dtype), estimate, bool(w.converged))
        )
    return integrated, records


def _run_rounds(passes: _Passes, works: list[_Work], attention, tol: float, s: _Settings) -> None:
    """Evaluate, estimate and refine until every work item converged or ran out of budget."""
    levels = adaptive_levels()
    active = [w for w in works if not w.done]
    while active:
        _evaluate(passes, active, levels, attention, s)
        for w in active:
            _estimate(w, attention[(w.example, w.layer)])
            if w.estimate <= tol:
                w.converged = w.done = True
            elif w.rounding > tol / 2 or not _refine(w, tol, len(levels)):
                w.done = True  # bf16 rounding alone is too large, or no work is left in the budget
        active = [w for w in active if not w.done]


def _evaluate(passes: _Passes, works: list[_Work], levels, attention, s: _Settings) -> None:
    """One round: F at every new endpoint (forward rows), then the nodes every leaf still needs
    (gradient rows), packed into passes by dtype and layer under the memory budget."""
    device = passes.device
    # forward rows (layer, example, alpha) for endpoints without F, in fp32
    wanted: dict[tuple[int, int, float], _Work] = {}
    for w in works:
        for leaf in w.leaves:
            for x in (leaf.a, leaf.b):
                if x not in w.F:
                    wanted[(w.layer, w.example, x)] = w
    keys = sorted(wanted)
    for start, stop in plan_forward_rows(
        len(keys),
        batch=passes.bsz,
        per_row_layer=passes.per_row_layer(None),
        budget=s.budget,
        per_row=passes.per_row(),
    ):
        values = passes.values(_groups([k[:3] for k in keys[start:stop]], device)).tolist()
        for (layer, b, x), v in zip(keys[start:stop], values, strict=True):
            wanted[(layer, b, x)].F[x] = v

    # gradient rows (layer, example, alpha, sink): the sink takes the row's gradient [heads, n, n]
    rows: dict[torch.dtype | None, list[tuple]] = {}
    for w in works:
        padded_attention = attention[(w.example, w.layer)][0]
        for leaf in w.leaves:
            if leaf.level >= leaf.target:
                continue
            upgrade = leaf.level == leaf.target - 1 and leaf.level >= 0
            level = levels[leaf.target]
            nodes, weights, embedded = level.on(leaf.a, leaf.b)
            up = levels[1].on(leaf.a, leaf.b)[1] if leaf.target == 0 and len(levels) > 1 else None
            first = len(nodes) - level.new if upgrade else 0
            # bf16: the middle node of [0, 1] once more in fp32, to measure bf16's rounding
            probe = w.dtype is not None and leaf.level == -1 and leaf.target == 0 and w.probe[1] is None
            for j in range(first, len(nodes)):
                coefficients = (weights[j], embedded[j], None if up is None else up[j])
                sink = _sink(leaf, coefficients, padded_attention if w.dtype is not None else None)
                if probe and j == PROBE_NODE:
                    sink = _chain(sink, _keep(w.probe, 0))
                    rows.setdefault(None, []).append((w.layer, w.example, float(nodes[j]), _keep(w.probe, 1)))
                rows.setdefault(w.dtype, []).append((w.layer, w.example, float(nodes[j]), sink))
            w.nodes += len(nodes) - first
    for dtype, part in rows.items():
        _gradient_rows(passes, part, dtype, s)
    for w in works:
        for leaf in w.leaves:
            if leaf.level < leaf.target:
                _finish(leaf)


def _sink(leaf: _Leaf, coefficients, padded_attention: torch.Tensor | None) -> Callable[[torch.Tensor], None]:
    """Adds a node's gradient to the leaf's sums of this round: result, embedded rule, level 1's
    partial sum; with bf16 also the node's |weight| * ||A g|| (for the rounding estimate)."""
    result, embedded, partial = (float(c) if c is not None else None for c in coefficients)

    def add(g: torch.Tensor) -> None:
        sums = leaf.sums
        if sums[0] is None:
            sums[0], sums[1] = torch.zeros_like(g), torch.zeros_like(g)
            if partial is not None:
                sums[2] = torch.zeros_like(g)
        sums[0].add_(g, alpha=result)
        sums[1].add_(g, alpha=embedded)
        if partial is not None:
            sums[2].add_(g, alpha=partial)
        if padded_attention is not None:
            size = float((padded_attention * g).norm())
            leaf.sums_magnitude[0] += abs(result) * size
            if partial is not None:
                leaf.sums_magnitude[1] += abs(partial) * size

    return add


def _keep(slots: list, index: int) -> Callable[[torch.Tensor], None]:
    def keep(g: torch.Tensor) -> None:
        slots[index] = g.clone()

    return keep


def _chain(*sinks: Callable[[torch.Tensor], None]) -> Callable[[torch.Tensor], None]:
    def both(g: torch.Tensor) -> None:
        for sink in sinks:
            sink(g)

    return both


def _gradient_rows(passes: _Passes, rows: list[tuple], dtype, s: _Settings) -> None:
    """Run gradient rows (layer, example, alpha, sink) of one dtype, in passes under the budget."""
    device = passes.device
    rows.sort(key=lambda r: r[0])  # layer order; stable, so leaves and nodes keep their order
    counts: dict[int, int] = {}
    for r in rows:
        counts[r[0]] = counts.get(r[0], 0) + 1
    offsets, start = {}, 0
    for layer in sorted(counts):
        offsets[layer] = start
        start += counts[layer]
    plan = plan_rows(
        sorted(counts.items()),
        num_layers=s.num_layers,
        batch=passes.bsz,
        per_row_layer=passes.per_row_layer(dtype),
        budget=s.budget,
        per_row=passes.per_row(),
    )
    for chunks in plan:
        parts = [rows[offsets[c.layer] + c.start : offsets[c.layer] + c.stop] for c in chunks]
        groups = [
            _Group(
                c.layer,
                torch.tensor([r[1] for r in part], dtype=torch.long, device=device),
                torch.tensor([r[2] for r in part], dtype=torch.float32),
                torch.ones(len(part), dtype=torch.float32, device=device),
            )
            for c, part in zip(chunks, parts, strict=True)
        ]
        grads = passes.gradients(groups, dtype)
        for part, grad in zip(parts, grads, strict=True):
            for row, g in zip(part, grad.float(), strict=True):
                row[3](g)
        del grads


def _groups(keys: Sequence[tuple[int, int, float]], device) -> list[_Group]:
    """Forward rows (layer, example, alpha), sorted by layer, as one group per layer."""
    groups: list[_Group] = []
    for layer in sorted({k[0] for k in keys}):
        part = [k for k in keys if k[0] == layer]
        groups.append(
            _Group(
                layer,
                torch.tensor([k[1] for k in part], dtype=torch.long, device=device),
                torch.tensor([k[2] for k in part], dtype=torch.float32),
                torch.ones(len(part), dtype=torch.float32, device=device),
            )
        )
    return groups


def _finish(leaf: _Leaf) -> None:
    """Close the round of a leaf: its new result and the difference to its embedded rule."""
    new_result, new_embedded, new_partial = leaf.sums
    if leaf.level == leaf.target - 1 and leaf.level >= 0:  # went up a level: reuse the nodes below
        result = leaf.partial + new_result
        embedded = leaf.result  # the level below is the embedded rule
        leaf.magnitude = leaf.partial_magnitude + leaf.sums_magnitude[0]
        leaf.partial, leaf.partial_magnitude = None, 0.0
    else:
        result, embedded = new_result, new_embedded
        leaf.magnitude = leaf.sums_magnitude[0]
        leaf.partial, leaf.partial_magnitude = new_partial, leaf.sums_magnitude[1]
    leaf.result, leaf.difference = result, result - embedded
    leaf.sums, leaf.sums_magnitude = [None, None, None], [0.0, 0.0]
    leaf.level = leaf.target


def _estimate(w: _Work, attention: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]) -> None:
    """The layer's relative error estimate from its leaves (see the module docstring), plus, in
    bf16, the rounding measured at the probe node."""
    total = None
    for leaf in w.leaves:
        scores = _real(leaf.result, attention)
        if leaf.difference is not None:  # evaluated in this round
            leaf.error = float(_real(leaf.difference, attention).norm())
            gap = float(scores.sum()) - (w.F[leaf.b] - w.F[leaf.a])
            noise = GAP_NOISE * FP32_EPS * (abs(w.F[leaf.a]) + abs(w.F[leaf.b]))
            leaf.gap = max(0.0, abs(gap) - noise)
            leaf.difference = None
        total = scores if total is None else total + scores
    norm_f = float(total.norm())
    # completeness is measured against the layer's F(A) - F(0 A), as far as the scores do not cancel
    # to much less than their mass (then against a tenth of the mass: no chasing of a near-zero total)
    scale = max(abs(w.F[1.0] - w.F[0.0]), float(total.abs().sum()) / GAP_CANCELLATION)
    estimate = 0.0
    for leaf in w.leaves:
        leaf.eta = max(_ratio(leaf.error, norm_f), _ratio(leaf.gap, scale))
        estimate += leaf.eta
    if w.dtype is not None:
        low, full = w.probe
        relative = _ratio(float((attention[0] * (low - full)).norm()), float((attention[0] * full).norm()))
        w.rounding = ROUNDING_SAFETY * relative * _ratio(sum(leaf.magnitude for leaf in w.leaves), norm_f)
        estimate += w.rounding
    w.estimate = estimate


def _real(integral: torch.Tensor, attention: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]):
    """A (x) an integral `[heads, n, n]` of the padded batch, over the example's real tokens only:
    scores `[heads, n_b, n_b]` in float64."""
    _, real_attention, keep = attention
    if keep is not None:
        integral = integral[:, keep][:, :, keep]
    return (real_attention * integral).double()


def _ratio(x: float, norm: float) -> float:
    if x == 0.0:
        return 0.0
    return x / norm if norm > 0.0 else math.inf


def _refine(w: _Work, tol: float, num_levels: int) -> bool:
    """Mark the leaves with the largest share of the estimate for another level or halving, until
    the rest is within tol / 2. False when none can be refined within the budget."""
    rest = w.estimate
    refined = False
    halves: list[_Leaf] = []
    for leaf in sorted(w.leaves, key=lambda leaf: -leaf.eta):
        if refined and rest <= tol / 2:
            break
        if leaf.level + 1 < num_levels:
            leaf.target = leaf.level + 1
        elif len(w.leaves) + len(halves) < w.cap:
            middle = (leaf.a + leaf.b) / 2.0
            top = num_levels - 1
            halves += [_Leaf(leaf.a, middle, target=top), _Leaf(middle, leaf.b, target=top)]
            leaf.target = HALVED
        else:
            continue
        refined = True
        rest -= leaf.eta
    if halves:
        w.leaves = [leaf for leaf in w.leaves if leaf.target != HALVED] + halves
    return refined


# ---- dtype, device ------------------------------------------------------------------------------
def resolve_dtype(dtype, device) -> torch.dtype | None:
    """None for exact fp32; torch.bfloat16 for autocast. "auto" picks bf16 where it is fast (the
    error-controlled mode then keeps it per layer only where the estimate allows)."""
    mode = _dtype_mode(dtype)
    if mode == "float32":
        return None
    if mode == "bfloat16":
        return torch.bfloat16
    return torch.bfloat16 if bf16_is_fast(torch.device(device)) else None


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bf16 matrix products are fast here: a GPU that supports bf16, a CPU with AMX or
    AVX512-BF16."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


@contextlib.contextmanager
def _frozen(model) -> Iterator[None]:
    """No parameter requires a gradient while attributing: autograd then keeps only what the
    gradients of the attention leaves need (not the inputs of every linear layer), and the layers
    below the first target layer of a pass build no graph."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def _as_item(x, index: int) -> _Item:
    if isinstance(x, _Item):
        return x
    if isinstance(x, str):
        return _Item(None, x, None, None)
    if isinstance(x, tuple):
        return _Item(None, x[0], x[1] if len(x) > 1 else None, x[2] if len(x) > 2 else None)
    if hasattr(x, "text"):
        return _Item(
            getattr(x, "id", None),
            x.text,
            getattr(x, "text_pair", None),
            getattr(x, "label", None),
            getattr(x, "target", None),
            getattr(x, "foil", None),
        )
    if hasattr(x, "prompt"):  # attattr.prompts.PromptExample
        return _Item(getattr(x, "id", None), x.prompt, None, None, x.target, getattr(x, "foil", None))
    raise InputError(
        f"example {index}: expected a text, a (text, pair) tuple or an Example, got {type(x).__name__}"
    )


def _label_names(model) -> list[str] | None:
    id2label = getattr(model.config, "id2label", None) or {}
    names = [id2label[i] for i in sorted(id2label)]
    if not names or all(str(x).startswith("LABEL_") for x in names):
        return None
    return [str(x) for x in names]


def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        raise ModelError("the model has no parameters") from None


def _versions() -> dict[str, str]:
    import transformers

    return {"attattr": __version__, "torch": torch.__version__, "transformers": transformers.__version__}
