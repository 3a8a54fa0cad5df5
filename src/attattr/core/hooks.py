"""Our attention function, registered with transformers' AttentionInterface.

Installed on a model for the duration of a `with AttentionHook(model):` block, it computes
attention exactly like the eager implementation and, on request:
  (a) records each layer's attention probabilities,
  (b) replaces one layer's probabilities by alpha * A for a slice of the batch rows, optionally
      as a leaf tensor whose gradient is the attribution integrand,
  (c) multiplies chosen heads' probabilities by gates (head pruning, Taylor importance),
and it can re-select batch rows at a layer's entry, so that the layers below a target layer run
once per example while the scaled copies exist only from the target layer up (prefix reuse).

"Layer" means the k-th attention call of a forward pass, which also covers ALBERT's shared layer.
"""

from __future__ import annotations

import contextvars
import weakref
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

from .errors import UnsupportedModelError

ATTENTION_NAME = "attattr"

# Architectures whose attention does not go through the interface (they compute it inline).
NOT_ON_INTERFACE = {
    "deberta": "DeBERTa computes disentangled (content/position) attention inline, not through AttentionInterface",
    "deberta-v2": "DeBERTa-v2 computes disentangled (content/position) attention inline, not through AttentionInterface",
    "mpnet": "MPNet adds relative-position bias inside its own attention code, not through AttentionInterface",
    "funnel": "Funnel pools attention inline, not through AttentionInterface",
    "xlnet": "XLNet's two-stream attention is computed inline, not through AttentionInterface",
}

_ACTIVE: contextvars.ContextVar[AttentionHook | None] = contextvars.ContextVar("attattr_hook", default=None)


@dataclass
class Injection:
    """Replace a layer's attention probabilities by alphas * A on rows [start, start + len(alphas))."""

    start: int
    alphas: torch.Tensor  # [rows] float32
    make_leaf: bool = True


def _attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    # query: [batch, heads, q_len, head_dim]; key/value: [batch, kv_heads, k_len, head_dim]
    hook = _ACTIVE.get()
    if key.shape[1] != query.shape[1]:  # grouped-query attention: share kv heads
        groups = query.shape[1] // key.shape[1]
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask[..., : key.shape[-2]]
    probs = nn.functional.softmax(scores, dim=-1)  # [batch, heads, q, k]
    if hook is not None:
        probs = hook.on_attention(probs)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    out = torch.matmul(probs.to(value.dtype), value)
    return out.transpose(1, 2).contiguous(), probs


AttentionInterface.register(ATTENTION_NAME, _attention_forward)
ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, eager_mask)


def check_supported(model: nn.Module) -> None:
    """Raise UnsupportedModelError if the model's attention cannot be hooked."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type in NOT_ON_INTERFACE:
        raise UnsupportedModelError(
            f"unsupported architecture {model_type!r}: {NOT_ON_INTERFACE[model_type]}"
        )
    if not isinstance(model, PreTrainedModel) or not model._can_set_attn_implementation():
        name = type(model).__name__
        raise UnsupportedModelError(
            f"unsupported architecture {name}: its attention does not run through transformers' "
            "AttentionInterface, so attattr cannot read or scale it"
        )


class AttentionHook:
    """Context manager: installs the attattr attention function on `model` and restores it after.

    Attributes set by the caller between forward passes:
      record            keep each layer's probabilities in `attentions` (detached)
      record_rows       None (all rows) or N: keep only the first N rows (a copy, so the other rows'
                        probabilities are freed after their layer)
      head_gates        None, [layers, heads] or [examples, layers, heads] multipliers
      injections        {layer: Injection}
      row_selections    {layer: LongTensor of row indices taken at that layer's entry}
    Filled by a forward pass: `attentions` {layer: [rows, heads, q, k]}, `leaves` {layer: tensor}.
    """

    def __init__(self, model: nn.Module, *, record: bool = False, head_gates: torch.Tensor | None = None):
        check_supported(model)
        self.model = model
        self.record = record
        self.record_rows: int | None = None
        self.head_gates = head_gates
        self.injections: dict[int, Injection] = {}
        self.row_selections: dict[int, torch.Tensor] = {}
        self.attentions: dict[int, torch.Tensor] = {}
        self.leaves: dict[int, torch.Tensor] = {}
        self._layer = 0
        self._entries = 0
        self._row_origin: torch.Tensor | None = None  # [rows]: which input example each row came from
        self._batch: int | None = None  # rows of the model's input
        self._selected = False  # whether rows were re-selected in this pass
        self._handles: list = []
        self._token = None
        self._previous_impl = None

    # ---- installation ------------------------------------------------------------------
    def __enter__(self) -> AttentionHook:
        self._previous_impl = self.model.config._attn_implementation
        self.model.set_attn_implementation(ATTENTION_NAME)
        self._token = _ACTIVE.set(self)
        self._handles.append(self.model.register_forward_pre_hook(self._on_model_start, with_kwargs=True))
        for layer_module in layer_modules(self.model):
            self._handles.append(
                layer_module.register_forward_pre_hook(self._on_layer_entry, with_kwargs=True)
            )
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self._token is not None:
            _ACTIVE.reset(self._token)
            self._token = None
        self.model.set_attn_implementation(self._previous_impl or "eager")

    @property
    def next_layer(self) -> int:
        """The layer whose attention runs next in the current forward pass."""
        return self._layer

    def reset(self) -> None:
        """Clear per-pass settings and outputs (gates are kept)."""
        self.injections.clear()
        self.row_selections.clear()
        self.attentions.clear()
        self.leaves.clear()

    # ---- callbacks ---------------------------------------------------------------------
    def _on_model_start(self, module, args, kwargs):
        self._layer = 0
        self._entries = 0
        self.attentions.clear()
        self.leaves.clear()
        self._batch = _batch_size(args, kwargs)
        self._row_origin = torch.arange(self._batch) if self._batch is not None else None
        self._selected = False
        return None

    def _on_layer_entry(self, module, args, kwargs):
        layer = self._entries
        self._entries += 1
        index = self.row_selections.get(layer)
        if index is None and not self._selected:
            return None
        if args:
            hidden, rest_args = args[0], args[1:]
        else:
            hidden, rest_args = kwargs["hidden_states"], ()
        if index is not None:
            index = index.to(hidden.device)
            hidden = hidden.index_select(0, index)
            self._row_origin = self._row_origin.to(hidden.device)[index]
            self._selected = True
        origin, batch = self._row_origin, self._batch

        # Everything else a layer receives (masks, position embeddings) is made by the model from the
        # original batch: map it to the current rows through their origin.
        def select(x):
            if isinstance(x, torch.Tensor) and x.dim() >= 2 and x.shape[0] == batch:
                return x.index_select(0, origin.to(x.device))
            if isinstance(x, tuple):
                return tuple(select(v) for v in x)
            if isinstance(x, list):
                return [select(v) for v in x]
            return x

        new_kwargs = {k: select(v) for k, v in kwargs.items() if k != "hidden_states"}
        if args:
            return (hidden, *select(rest_args)), new_kwargs
        new_kwargs["hidden_states"] = hidden
        return args, new_kwargs

    def on_attention(self, probs: torch.Tensor) -> torch.Tensor:
        layer = self._layer
        self._layer += 1
        gates = self._gates_for(layer, probs)
        if gates is not None:
            probs = probs * gates[:, :, None, None].to(probs.dtype)
        if self.record:
            n = self.record_rows
            self.attentions[layer] = probs.detach() if n is None else probs[:n].detach().clone()
        injection = self.injections.get(layer)
        if injection is not None:
            s, r = injection.start, injection.alphas.shape[0]
            alphas = injection.alphas.to(device=probs.device, dtype=probs.dtype)
            scaled = alphas[:, None, None, None] * probs[s : s + r].detach()
            if injection.make_leaf:
                scaled.requires_grad_(True)
                self.leaves[layer] = scaled
            probs = torch.cat([probs[:s], scaled, probs[s + r :]], dim=0)
        return probs

    def _gates_for(self, layer: int, probs: torch.Tensor) -> torch.Tensor | None:
        gates = self.head_gates
        if gates is None:
            return None
        if gates.dim() == 2:  # [layers, heads]: the same for every row
            return gates[layer].unsqueeze(0).expand(probs.shape[0], -1)
        origin = self._row_origin if self._row_origin is not None else torch.arange(probs.shape[0])
        return gates[origin.to(gates.device), layer]  # [rows, heads]


def _batch_size(args, kwargs) -> int | None:
    for name in ("input_ids", "inputs_embeds"):
        x = kwargs.get(name)
        if isinstance(x, torch.Tensor):
            return x.shape[0]
    for x in args:
        if isinstance(x, torch.Tensor):
            return x.shape[0]
    return None


# weak keys: a model that is freed must not leave its layers behind for a new model at the same id
_LAYER_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def layer_modules(model: nn.Module) -> list[nn.Module]:
    """The modules that run once per layer, in call order, found by a tiny probe forward.

    Each attention call is traced back to the nearest ancestor that is an element of an
    nn.ModuleList: BertLayer, TransformerBlock (DistilBERT), AlbertLayer (shared by all layers)...
    """
    if model in _LAYER_CACHE:
        return _LAYER_CACHE[model]
    parent_of: dict[int, tuple[nn.Module, bool]] = {}
    for parent in model.modules():
        for child in parent.children():
            parent_of[id(child)] = (parent, isinstance(parent, nn.ModuleList))
    called: list[nn.Module] = []
    previous = model.config._attn_implementation

    def spy(module, *a, **k):
        called.append(module)
        return _attention_forward(module, *a, **k)

    AttentionInterface.register("attattr-probe", spy)
    ALL_MASK_ATTENTION_FUNCTIONS.register("attattr-probe", eager_mask)
    try:
        model.set_attn_implementation("attattr-probe")
        device = next(model.parameters()).device
        ids = torch.tensor([[_probe_token(model)] * 3], device=device)
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        model.set_attn_implementation(previous or "eager")
    if not called:
        raise UnsupportedModelError(
            f"unsupported architecture {type(model).__name__}: no attention call went through "
            "transformers' AttentionInterface"
        )
    layers: list[nn.Module] = []
    for attn in called:
        node = attn
        while id(node) in parent_of and not parent_of[id(node)][1]:
            node = parent_of[id(node)][0]
        layer = node if id(node) in parent_of else attn
        if not layers or layers[-1] is not layer:
            layers.append(layer)
    # a shared layer (ALBERT) appears once per call; hook each distinct module once
    unique: list[nn.Module] = []
    for m in layers:
        if all(m is not u for u in unique):
            unique.append(m)
    if len(called) != model_num_layers(model):
        raise UnsupportedModelError(
            f"unsupported architecture {type(model).__name__}: {len(called)} attention calls per forward "
            f"for {model_num_layers(model)} layers"
        )
    _LAYER_CACHE[model] = unique
    return unique


def _probe_token(model) -> int:
    config = model.config
    for name in ("cls_token_id", "bos_token_id", "pad_token_id"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return 0


def model_num_layers(model: nn.Module) -> int:
    config = model.config
    for name in ("num_hidden_layers", "n_layers", "n_layer", "num_layers"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise UnsupportedModelError(f"cannot tell how many layers {type(model).__name__} has")


def model_num_heads(model: nn.Module) -> int:
    config = model.config
    for name in ("num_attention_heads", "n_heads", "n_head"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise UnsupportedModelError(f"cannot tell how many heads {type(model).__name__} has")
