"""The attribution computation (docs/method.md §1): integrated gradients over each layer's attention.

For target layer l the attention probabilities A^l are replaced by alpha * A^l. The gradient of the
output F with respect to that scaled matrix, integrated over alpha and multiplied by A^l, is the
attribution. What makes it fast without changing a number:
  * prefix reuse: the layers below l do not depend on alpha, so each pass runs them once per example
    and only forks the scaled copies at layer l (`AttentionHook.row_selections`);
  * staircase: one pass can serve several target layers; copies for a higher target are forked from
    the clean rows when the pass reaches that layer, and the clean rows are dropped after the last one;
  * one reference pass without gradients gives A for every layer, F(A) and every F(0 * A^l);
  * several examples per pass (padding masked) and a memory budget that splits the steps into passes;
  * optional bf16 autocast (matrix products in bf16, integration accumulated in fp32).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..version import __version__
from .encoding import model_inputs, model_max_length, token_count
from .errors import InputError, ModelError
from .hooks import AttentionHook, Record, Scale, check_supported, model_num_heads, model_num_layers
from .objectives import Objective, make_objective
from .quadrature import DEFAULT_RULE, DEFAULT_STEPS, RULES
from .quadrature import rule as quadrature_rule
from .result import Attribution

# steps="auto": the fewest Gauss-Legendre nodes whose integration error is at most that of the
# paper's 20-step right Riemann sum, measured by `make bench` (see benchmarks/README.md): on minilm-rt
# over RT dev sentences, 3 nodes gave a mean relative error of 1.8e-2 against 5.1e-2 for the paper's
# rule (2 nodes: 1.0e-1; 4 nodes: 6.8e-3), against a 256-node reference.
AUTO_GAUSS_NODES = 3
DEFAULT_BUDGET_FRACTION = 0.35
# On a CPU, bigger passes than this gained nothing when measured and were 15-30 % slower on short
# inputs (their activations no longer stay in cache and come from fresh pages): exact mode on 8 RT
# sentences took 0.95 s per example with a 2 GiB budget against 1.3 s with 7 GiB.
CPU_BUDGET_CAP = 2 << 30


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
    target: str | int = "predicted",
    output: str | None = None,
    foil=None,
    per_token: bool = False,
    steps: int | str = DEFAULT_STEPS,
    rule: str = DEFAULT_RULE,
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
    rule, steps: the integration rule (`attattr.core.quadrature.RULES`) and its number of nodes;
        steps="auto" with Gauss-Legendre uses the benchmarked node count.
    layers: the layers to attribute (default all).
    dtype: None/"float32" (exact), "bfloat16" (autocast) or "auto" (bf16 where the hardware has it).
    memory_budget: bytes a pass may use for activations (default: a fraction of free memory).
    fast: the fast preset: Gauss-Legendre, steps="auto", dtype="auto".
    """
    if fast:
        rule, steps, dtype = "gauss-legendre", "auto", "auto"
    check_supported(model)
    objective = make_objective(output, target, model=model, foil=foil, per_token=per_token)
    output = objective.name
    if rule not in RULES:
        raise InputError(f"unknown integration rule {rule!r}; choose one of: {', '.join(RULES)}")
    if steps == "auto":
        steps = AUTO_GAUSS_NODES if rule == "gauss-legendre" else DEFAULT_STEPS
    alphas, weights = quadrature_rule(rule, steps)
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
    autocast_dtype = resolve_dtype(dtype, device or _model_device(model))
    if device is not None:
        model.to(device)
    device = _model_device(model)
    model.eval()
    max_length = model_max_length(model, tokenizer)
    model_id = model_id or getattr(model.config, "_name_or_path", "") or type(model).__name__
    label_names = list(label_names) if label_names else _label_names(model)
    budget = memory_budget or default_memory_budget(device)
    settings = _Settings(
        objective,
        output,
        rule,
        int(steps),
        alphas,
        weights,
        layers,
        num_layers,
        num_heads,
        autocast_dtype,
        budget,
    )

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


@dataclass
class _Settings:
    objective: Objective
    output: str
    rule: str
    steps: int
    alphas: Sequence[float]
    weights: Sequence[float]
    layers: list[int]
    num_layers: int
    num_heads: int
    dtype: torch.dtype | None
    budget: int


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
        with torch.no_grad(), _autocast(device, s.dtype):
            outputs = readout(model, inputs, hook)
        attentions = {layer: recorder.attentions[layer].float() for layer in s.layers}  # [B, H, n, n]
        reference = outputs.rows(slice(0, bsz))
        probabilities, predicted = objective.predictions(reference)
        targets = objective.resolve(reference, [it.label for it in batch])  # [B]
        values = objective(outputs, targets)  # [rows]
        output_values = values[:bsz]
        baselines = values[bsz:].view(len(s.layers), bsz)
        del outputs, reference, values

        # Gradient passes: integrated gradients of F w.r.t. each target layer's scaled attention.
        integrated = {layer: torch.zeros_like(attentions[layer]) for layer in s.layers}
        alphas = torch.tensor(s.alphas, dtype=torch.float32)
        weights = torch.tensor(s.weights, dtype=torch.float32, device=device)
        for units in plan_passes(s.layers, len(s.alphas), s.num_layers, bsz, n, model, s.budget, s.dtype):
            hook.row_selections.clear()
            hook.edits = []
            # Rows while a pass runs: [clean rows (until the last target layer)] + [scaled copies].
            copies = 0
            row_weights = []
            last = units[-1][0]
            for layer, k0, k1 in units:
                k = k1 - k0
                keep_clean = layer != last
                index = [clean] if keep_clean else []
                index += [torch.arange(bsz, bsz + copies, device=device), clean.repeat(k)]
                hook.row_selections[layer] = torch.cat(index)
                start = (bsz if keep_clean else 0) + copies
                hook.edits.append(Scale(layer, start, alphas[k0:k1].repeat_interleave(bsz), make_leaf=True))
                row_weights.append(weights[k0:k1].repeat_interleave(bsz))
                copies += k * bsz
            with torch.enable_grad():
                with _autocast(device, s.dtype):
                    outputs = readout(model, inputs, hook)  # rows: the copies, in unit order
                total = (objective(outputs, targets) * torch.cat(row_weights)).sum()
            leaves = [edit.leaf for edit in hook.edits]
            grads = torch.autograd.grad(total, leaves)
            for (layer, k0, k1), grad in zip(units, grads, strict=True):
                integrated[layer] += grad.float().view(k1 - k0, bsz, *grad.shape[1:]).sum(0)
            del outputs, total, leaves, grads
        hook.edits = []

    versions = _versions()
    results = []
    for b, it in enumerate(batch):
        keep = mask[b].nonzero().flatten()
        ids = enc["input_ids"][b, keep].tolist()
        att = torch.stack([attentions[layer][b] for layer in s.layers])[:, :, keep][:, :, :, keep]
        ig = torch.stack([integrated[layer][b] for layer in s.layers])[:, :, keep][:, :, :, keep]
        scores = (att * ig).cpu().contiguous()
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
                rule=s.rule,
                steps=s.steps,
                model_id=str(model_id),
                text=it.text,
                text_pair=it.text_pair,
                label=None if it.label is None else int(it.label),
                label_names=label_names,
                example_id=it.id,
                dtype="bfloat16" if s.dtype == torch.bfloat16 else "float32",
                truncated=bool(truncated[b]),
                versions=versions,
            )
        )
        objective.annotate(results[-1], b)  # decoders: the tokens F reads, the top predictions
    return results


def plan_passes(
    layers: Sequence[int],
    num_alphas: int,
    num_layers: int,
    batch: int,
    seq_len: int,
    model,
    budget: int,
    dtype: torch.dtype | None,
) -> list[list[tuple[int, int, int]]]:
    """Group (layer, alpha range) units into passes whose activation memory stays under `budget`.

    A unit (l, k0, k1) forks (k1 - k0) * batch rows at layer l that live through layers l..L-1.
    Units are packed in layer order (a staircase) until the next one would exceed the budget.
    """
    per_row_layer = activation_bytes(model, seq_len, dtype)
    clean_cost = batch * num_layers * per_row_layer
    passes: list[list[tuple[int, int, int]]] = []
    current: list[tuple[int, int, int]] = []
    used = clean_cost
    for layer in layers:
        row_cost = batch * (num_layers - layer) * per_row_layer  # one alpha of this layer
        per_chunk = max(1, int((budget - clean_cost) // max(row_cost, 1)))
        for k0 in range(0, num_alphas, per_chunk):
            k1 = min(num_alphas, k0 + per_chunk)
            cost = (k1 - k0) * row_cost
            if current and (used + cost > budget or current[-1][0] == layer):
                passes.append(current)
                current, used = [], clean_cost
            current.append((layer, k0, k1))
            used += cost
    if current:
        passes.append(current)
    return passes


def activation_bytes(model, seq_len: int, dtype: torch.dtype | None) -> int:
    """Rough bytes kept for the backward pass per batch row per layer (hidden states, FFN, attention)."""
    cfg = model.config
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "dim", 768)
    ffn = getattr(cfg, "intermediate_size", None) or getattr(cfg, "hidden_dim", 4 * hidden)
    heads = model_num_heads(model)
    floats = seq_len * (14 * hidden + 4 * ffn) + 5 * heads * seq_len * seq_len
    return int(floats * 4 * (1.25 if dtype == torch.bfloat16 else 1.0))


def default_memory_budget(device: torch.device) -> int:
    """A safe fraction of the memory that is free now (the GPU's, or CPU RAM up to CPU_BUDGET_CAP)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.6)
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        available = info.get("MemAvailable", 8 << 30)
    except OSError:
        available = 8 << 30
    return min(int(available * DEFAULT_BUDGET_FRACTION), CPU_BUDGET_CAP)


def resolve_dtype(dtype, device) -> torch.dtype | None:
    """None for exact fp32; torch.bfloat16 for autocast. "auto" picks bf16 where it is fast."""
    if dtype in (None, "float32", "fp32", torch.float32):
        return None
    if dtype in ("bfloat16", "bf16", torch.bfloat16):
        return torch.bfloat16
    if dtype == "auto":
        return torch.bfloat16 if bf16_is_fast(torch.device(device)) else None
    raise InputError(f"unknown dtype {dtype!r}; choose float32, bfloat16 or auto")


def bf16_is_fast(device: torch.device) -> bool:
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
