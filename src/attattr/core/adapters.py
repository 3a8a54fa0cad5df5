"""Attention adapters for encoder families whose self-attention is computed inline.

DeBERTa-v2/v3 and MPNet compute their attention scores (with relative-position terms) and take the
softmax inside the attention module's own forward, not through transformers' AttentionInterface.
An adapter is a replacement forward for that module, registered by `config.model_type`: it computes
the scores exactly as the family does, takes the softmax, and hands the probabilities
`[rows, heads, query, key]` to a callback (an AttentionHook's edits, docs/method.md §1) before they
weight the values. `install(model, on_probs)` puts it on every attention module of a model and
returns a handle whose `remove()` gives the modules back their own forward.

`check(model)` refuses, by name, a config option the adapter does not implement; then, once per
model, it compares the adapted model's hidden states with the model's own on a small padded probe
batch, so that attention code changed by another transformers release is refused rather than
explained with wrong numbers.
"""

from __future__ import annotations

import functools
import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .errors import UnsupportedModelError
from .shapes import Probs

# what the adapted forward does with each layer's probabilities: on_probs(probs, module) -> probs
OnProbs = Callable[[Probs, nn.Module], Probs]


@dataclass(frozen=True)
class Adapter:
    """A replacement forward for one family's attention module."""

    model_type: str  # config.model_type it serves
    family: str  # the family's name in messages
    module_class: Callable[[], type[nn.Module]]  # the attention class whose forward is replaced (lazy)
    forward: Callable  # forward(module, on_probs, *the module's own arguments)
    check_config: Callable[[object], None]  # raises UnsupportedModelError naming an uncovered option
    # keyword arguments of a layer call that are the same for every row (relative-position tables):
    # a hook that re-selects batch rows at a layer's entry must pass them through untouched
    shared_kwargs: frozenset[str] = frozenset()


ADAPTERS: dict[str, Adapter] = {}


def register(adapter: Adapter) -> Adapter:
    ADAPTERS[adapter.model_type] = adapter
    return adapter


def adapter_for(model: nn.Module) -> Adapter | None:
    """The adapter registered for the model's `config.model_type`, or None."""
    return ADAPTERS.get(getattr(getattr(model, "config", None), "model_type", None))


def attention_modules(model: nn.Module, adapter: Adapter) -> list[nn.Module]:
    """The model's attention modules of exactly the class the adapter implements (not subclasses)."""
    cls = adapter.module_class()
    return [m for m in model.modules() if type(m) is cls]


class Installed:
    """Adapted forwards on a model's attention modules; `remove()` restores what was there."""

    def __init__(self, adapter: Adapter, patched: list[tuple[nn.Module, object]]):
        self.adapter = adapter
        self._patched = patched

    @property
    def shared_kwargs(self) -> frozenset[str]:
        return self.adapter.shared_kwargs

    def remove(self) -> None:
        for module, previous in reversed(self._patched):
            if previous is _ABSENT:
                module.__dict__.pop("forward", None)
            else:
                module.forward = previous  # an enclosing installation's forward
        self._patched = []


_ABSENT = object()


def install(model: nn.Module, on_probs: OnProbs) -> Installed | None:
    """Route the model's attention probabilities through `on_probs`; None if its family has no adapter."""
    adapter = adapter_for(model)
    if adapter is None:
        return None
    return _patch(adapter, attention_modules(model, adapter), on_probs)


def _patch(adapter: Adapter, modules: list[nn.Module], on_probs: OnProbs) -> Installed:
    patched = []
    for module in modules:
        # an instance attribute shadows the class's forward; nn.Module.__call__ looks it up per call
        patched.append((module, module.__dict__.get("forward", _ABSENT)))
        module.forward = functools.partial(adapter.forward, module, on_probs)
    return Installed(adapter, patched)


# models whose adapted outputs were compared with their own (weak: a freed model leaves nothing)
_VERIFIED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def check(model: nn.Module) -> None:
    """Raise UnsupportedModelError unless the model's family has an adapter that covers it exactly."""
    adapter = adapter_for(model)
    if adapter is None:
        raise UnsupportedModelError(
            f"unsupported architecture {type(model).__name__}: no attention adapter for "
            f"{getattr(getattr(model, 'config', None), 'model_type', None)!r}"
        )
    config = model.config
    adapter.check_config(config)
    modules = attention_modules(model, adapter)
    layers = getattr(config, "num_hidden_layers", None)
    if len(modules) != layers:
        cls = adapter.module_class()
        raise UnsupportedModelError(
            f"unsupported {adapter.family} variant {type(model).__name__}: attattr's adapter implements "
            f"transformers' {cls.__module__}.{cls.__name__}, found {len(modules)} of them for {layers} layers"
        )
    _verify(model, adapter, modules)


def _verify(model: nn.Module, adapter: Adapter, modules: list[nn.Module]) -> None:
    """Once per model: the adapted base model's hidden states equal its own on a probe batch."""
    if model in _VERIFIED:
        return
    if any("forward" in m.__dict__ for m in modules):
        return  # adapted by an active hook, whose own check ran before it was installed
    base = getattr(model, "base_model", model)
    ids, mask = _probe_batch(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            own = base(input_ids=ids, attention_mask=mask)[0]  # [2, seq, hidden]
            installed = _patch(adapter, modules, lambda probs, module: probs)
            try:
                ours = base(input_ids=ids, attention_mask=mask)[0]
            finally:
                installed.remove()
    finally:
        model.train(was_training)
    real = mask.bool()
    own, ours = own[real].float(), ours[real].float()
    error = float((own - ours).abs().max())
    tolerance = (1e-4 if base.dtype == torch.float32 else 3e-2) * max(1.0, float(own.abs().max()))
    if not error <= tolerance:  # also catches NaN
        import transformers

        raise UnsupportedModelError(
            f"unsupported {adapter.family} variant {type(model).__name__}: attattr's adapter of its attention "
            f"differs from the model's own by {error:.3g} on a probe input (transformers "
            f"{transformers.__version__}); its attention code is not the one the adapter implements"
        )
    _VERIFIED[model] = True


def _probe_batch(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Two inputs of 6 tokens, the second padded after 4: ids spread over the vocabulary."""
    vocab = int(getattr(model.config, "vocab_size", 100) or 100)
    device = next(model.parameters()).device
    ids = (torch.arange(12, device=device) * 7 + 3) % vocab
    mask = torch.ones(12, dtype=torch.long, device=device)
    mask[10:] = 0
    return ids.view(2, 6), mask.view(2, 6)


# ---- DeBERTa-v2 / v3 ----------------------------------------------------------------------------
# Disentangled attention (He et al., 2021): score(i, j) = (q_i·k_j + q_i·K^r_{δ(i,j)} + k_j·Q^r_{δ(j,i)})
# / sqrt(d * factor), where K^r/Q^r project a table of relative-position embeddings, δ is the
# (optionally log-bucketed) relative position clamped to the table, and factor counts the terms.
DEBERTA_TERMS = ("c2p", "p2c")


def _deberta_v2_class() -> type[nn.Module]:
    from transformers.models.deberta_v2.modeling_deberta_v2 import DisentangledSelfAttention

    return DisentangledSelfAttention


def _deberta_v2_options(config) -> None:
    terms = config.pos_att_type or []
    if isinstance(terms, str):
        terms = [t.strip() for t in terms.lower().split("|")]
    other = [t for t in terms if t not in DEBERTA_TERMS]
    if other:
        raise UnsupportedModelError(
            f"unsupported DeBERTa-v2 option pos_att_type={list(terms)!r}: attattr's adapter implements the "
            f"c2p and p2c position terms only, not {', '.join(map(repr, other))}"
        )
    kernel = getattr(config, "conv_kernel_size", 0) or 0
    if kernel > 0:
        raise UnsupportedModelError(
            f"unsupported DeBERTa-v2 option conv_kernel_size={kernel}: the convolution beside the first layer "
            "mixes the input batch into that layer's output, which attattr's adapter does not cover"
        )


def _deberta_v2_forward(
    module: nn.Module,
    on_probs: OnProbs,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor,
    output_attentions: bool = False,
    query_states: torch.Tensor | None = None,
    relative_pos: torch.Tensor | None = None,
    rel_embeddings: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Probs | None]:
    heads, size = module.num_attention_heads, module.attention_head_size

    def split(x: torch.Tensor) -> torch.Tensor:  # [rows, seq, heads * size] -> [rows, heads, seq, size]
        return x.view(*x.shape[:-1], heads, size).transpose(1, 2)

    query = split(module.query_proj(hidden_states if query_states is None else query_states))
    key = split(module.key_proj(hidden_states))
    value = split(module.value_proj(hidden_states))
    terms = module.pos_att_type
    # the factor counts the position terms named in the config, whether or not they are computed
    factor = 1 + sum(t in terms for t in DEBERTA_TERMS)
    scale = torch.sqrt(torch.tensor(size * factor, dtype=torch.float)).to(query.dtype)
    scores = torch.matmul(query, key.transpose(-1, -2) / scale)  # [rows, heads, query, key]
    if module.relative_attention:
        table = module.pos_dropout(rel_embeddings)
        scores = scores + _disentangled_bias(module, query, key, relative_pos, table, scale)
    scores = scores.masked_fill(~attention_mask.bool(), torch.finfo(query.dtype).min)
    probs = on_probs(nn.functional.softmax(scores, dim=-1), module)
    context = torch.matmul(module.dropout(probs), value)  # [rows, heads, query, size]
    context = context.transpose(1, 2).reshape(context.shape[0], context.shape[2], heads * size)
    return context, (probs if output_attentions else None)


def _disentangled_bias(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    relative_pos: torch.Tensor | None,
    table: torch.Tensor,
    scale: torch.Tensor,
) -> torch.Tensor:
    """The c2p and p2c terms, [rows, heads, query, key], already divided by the scale.
    table: [2 * positions (or more), hidden] relative-position embeddings."""
    from transformers.models.deberta_v2.modeling_deberta_v2 import build_relative_position

    q_len, k_len = query.shape[-2], key.shape[-2]
    if q_len != k_len:
        raise UnsupportedModelError(
            f"unsupported DeBERTa-v2 attention with {q_len} queries for {k_len} keys: attattr's adapter "
            "implements self-attention over one sequence"
        )
    if relative_pos is None:
        relative_pos = build_relative_position(
            query, key, bucket_size=module.position_buckets, max_position=module.max_relative_positions
        )
    if relative_pos.dim() < 2 or relative_pos.numel() != q_len * k_len:
        raise UnsupportedModelError(
            f"unsupported DeBERTa-v2 relative positions of shape {list(relative_pos.shape)}: the adapter "
            "implements one table of relative positions shared by every input"
        )
    delta = relative_pos.reshape(q_len, k_len).to(device=query.device, dtype=torch.long)  # [query, key]
    span = module.pos_ebd_size
    table = table[: 2 * span]  # [2 span, hidden]
    heads, size = module.num_attention_heads, module.attention_head_size

    def split(x: torch.Tensor) -> torch.Tensor:  # [2 span, heads * size] -> [heads, 2 span, size]
        return x.view(x.shape[0], heads, size).transpose(0, 1)

    terms = module.pos_att_type
    if module.share_att_key:
        pos_query, pos_key = split(module.query_proj(table)), split(module.key_proj(table))
    else:
        pos_key = split(module.pos_key_proj(table)) if "c2p" in terms else None
        pos_query = split(module.pos_query_proj(table)) if "p2c" in terms else None
    bias = 0
    if "c2p" in terms:  # content of query i to the position of key j relative to i
        c2p = torch.matmul(query, pos_key.transpose(-1, -2))  # [rows, heads, query, 2 span]
        index = torch.clamp(delta + span, 0, 2 * span - 1)  # [query, key]
        c2p = torch.gather(c2p, -1, index.expand(*c2p.shape[:-2], q_len, k_len))
        bias = bias + c2p / scale.to(c2p.dtype)
    if "p2c" in terms:  # content of key j to the position of query i relative to j
        p2c = torch.matmul(key, pos_query.transpose(-1, -2))  # [rows, heads, key, 2 span]
        index = torch.clamp(span - delta, 0, 2 * span - 1)  # read as [key, query]: row a is key a
        p2c = torch.gather(p2c, -1, index.expand(*p2c.shape[:-2], k_len, q_len)).transpose(-1, -2)
        bias = bias + p2c / scale.to(p2c.dtype)
    return bias


register(
    Adapter(
        "deberta-v2",
        "DeBERTa-v2",
        _deberta_v2_class,
        _deberta_v2_forward,
        _deberta_v2_options,
        shared_kwargs=frozenset({"relative_pos", "rel_embeddings"}),
    )
)


# ---- MPNet --------------------------------------------------------------------------------------
# score(i, j) = q_i·k_j / sqrt(d) + b_h(bucket(j - i)) + mask; the bias [rows, heads, query, key] is
# computed once by the encoder and passed to every layer.


def _mpnet_class() -> type[nn.Module]:
    from transformers.models.mpnet.modeling_mpnet import MPNetSelfAttention

    return MPNetSelfAttention


def _mpnet_options(config) -> None:
    return None  # the relative-position bias arrives computed; nothing else varies


def _mpnet_forward(
    module: nn.Module,
    on_probs: OnProbs,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_bias: torch.Tensor | None = None,
    output_attentions: bool = False,
    **kwargs,
) -> tuple[torch.Tensor, ...]:
    size = module.attention_head_size

    def split(x: torch.Tensor) -> torch.Tensor:  # [rows, seq, heads * size] -> [rows, heads, seq, size]
        return x.view(*x.shape[:-1], -1, size).transpose(1, 2)

    query, key, value = (
        split(module.q(hidden_states)),
        split(module.k(hidden_states)),
        split(module.v(hidden_states)),
    )
    scores = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(size)  # [rows, heads, query, key]
    if position_bias is not None:
        scores = scores + position_bias
    if attention_mask is not None:
        scores = scores + attention_mask  # additive (eager) mask
    probs = on_probs(nn.functional.softmax(scores, dim=-1), module)
    context = torch.matmul(module.dropout(probs), value)  # [rows, heads, query, size]
    context = context.transpose(1, 2).reshape(context.shape[0], context.shape[2], module.all_head_size)
    out = module.o(context)
    return (out, probs) if output_attentions else (out,)


register(Adapter("mpnet", "MPNet", _mpnet_class, _mpnet_forward, _mpnet_options))
