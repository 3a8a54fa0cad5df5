"""Our attention function, registered with transformers' AttentionInterface, and the edits it applies.

Installed on a model for the duration of a `with AttentionHook(model):` block, it computes attention
exactly like the eager implementation, then passes each layer's probabilities through the hook's
list of edits. An edit is any callable `edit(probs, context) -> probs` (`Probs` is
`[rows, heads, query, key]`; the `EditContext` names the layer, the attention module and each row's
origin example). The edits provided here:
  Record          keep each layer's probabilities (`hook.attentions`)
  Scale           replace one layer's probabilities by alpha * A on a slice of rows, optionally as a
                  leaf tensor whose gradient is the attribution integrand
  HeadGate        multiply chosen heads' probabilities by gates (head pruning, Taylor importance)
  ConnectionGate  multiply single entries (head, query, key) by gates (edge faithfulness)
The hook can also re-select batch rows at a layer's entry (`row_selections`), so that the layers
below a target layer run once per example while the scaled copies exist only from that layer up
(prefix reuse); `row_origin` then says which example each row inside the model came from.

Families that compute attention inside their own modules (DeBERTa-v2/v3, MPNet) get a replacement
attention forward from adapters.py for the same block instead; it hands its probabilities to the
same edits.

The attention function accepts exactly the keyword arguments it implements and refuses any other
(a T5-style `position_bias`, ...) with UnsupportedModelError: an argument silently ignored would give
wrong numbers. Implemented exactly as transformers' eager code computes them (docs/decoders.md):
grouped-query attention (key/value heads shared by groups of query heads; probabilities are per
query head), causal and padding masks (masked entries exactly 0), sliding windows (applied by the
mask the model builds, checked), Gemma-2's tanh soft-capping of the scores (`softcap`) and gpt-oss's
learned attention sinks (`s_aux`: one extra logit per head that takes part in the softmax and is then
dropped, so a row of A sums to less than 1).

"Layer" means the k-th attention call of a forward pass, which also covers ALBERT's shared layer.
"""

from __future__ import annotations

import contextvars
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

from . import adapters
from .errors import InputError, UnsupportedModelError
from .shapes import ConnectionGates, ExampleHeadTable, HeadTable, Origins, Probs

ATTENTION_NAME = "attattr"

# Architectures whose attention does not go through the interface (they compute it inline) and
# that have no adapter (adapters.py: DeBERTa-v2/v3 and MPNet do).
NOT_ON_INTERFACE = {
    "deberta": "DeBERTa computes disentangled (content/position) attention inline, not through AttentionInterface",
    "funnel": "Funnel pools attention inline, not through AttentionInterface",
    "xlnet": "XLNet's two-stream attention is computed inline, not through AttentionInterface",
}

# Keyword arguments the attention function accepts although it does not use them, and why that is
# exact. Checked for transformers 5 on BERT, RoBERTa, DistilBERT, ELECTRA, ALBERT, XLM-R, ModernBERT,
# Llama, Qwen2, Qwen3, Mistral, GPT-2, Gemma, Gemma-3 and Phi-3.
IGNORED_ARGUMENTS = {
    "position_ids": "positions are already in the query and key (rotary) or the embeddings",
    "use_cache": "the cache is updated by the attention module before the call",
    "output_attentions": "the probabilities are always returned",
    "encoder_hidden_states": "cross-attention keys and values arrive already projected",
    "output_router_logits": "a mixture-of-experts flag (gpt-oss) passed along with the layer's arguments",
    "deterministic": "flash-attention's determinism switch (ModernBERT); eager-style attention is deterministic",
}
# Arguments that change the result and that this function does not implement: refused unless None.
NOT_IMPLEMENTED = {
    "position_bias": "an additive position bias (T5-style)",
    "alibi": "ALiBi linear position biases",
}

_ACTIVE: contextvars.ContextVar[AttentionHook | None] = contextvars.ContextVar("attattr_hook", default=None)


def _attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    *,
    sliding_window: int | None = None,
    is_causal: bool | None = None,
    softcap: float | None = None,
    s_aux: torch.Tensor | None = None,
    **others,
) -> tuple[torch.Tensor, Probs]:
    check_arguments(others)
    probs = attention_probs(
        query, key, attention_mask, scaling, sliding_window, is_causal, softcap=softcap, sinks=s_aux
    )
    hook = _ACTIVE.get()
    if hook is not None:
        probs = hook.on_attention(probs, module)
    return _attention_output(module, probs, value, dropout), probs


def check_arguments(others: dict) -> None:
    """Raise UnsupportedModelError naming any argument the attention function does not implement."""
    for name, value in others.items():
        if name in IGNORED_ARGUMENTS or (name in NOT_IMPLEMENTED and value is None):
            continue
        what = NOT_IMPLEMENTED.get(name, "an argument attattr's attention function does not implement")
        raise UnsupportedModelError(
            f"unsupported attention argument {name}={_short(value)} ({what}): attattr computes attention "
            "itself and would give wrong numbers if it ignored it"
        )


def attention_probs(
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    sliding_window: int | None = None,
    is_causal: bool | None = None,
    *,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
) -> Probs:
    """softmax(q k^T * scaling + mask), as the eager implementation computes it.
    query: [batch, heads, q_len, head_dim]; key: [batch, kv_heads, k_len, head_dim].
    softcap: scores become softcap * tanh(scores / softcap) before the mask (Gemma-2).
    sinks: [heads] learned logits (gpt-oss), one extra column of the softmax, dropped afterwards."""
    if key.shape[1] != query.shape[1]:  # grouped-query attention: share kv heads
        if query.shape[1] % key.shape[1]:
            raise UnsupportedModelError(
                f"unsupported attention: {query.shape[1]} query heads cannot share {key.shape[1]} key/value heads"
            )
        key = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # [batch, heads, q, k]
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    q_len, k_len = scores.shape[-2:]
    if attention_mask is not None:
        attention_mask = attention_mask[..., :k_len]
        if sliding_window is not None:
            _check_window(attention_mask, sliding_window, q_len, k_len)
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    else:
        if sliding_window is not None and sliding_window < k_len:
            raise UnsupportedModelError(
                f"unsupported attention: sliding_window={sliding_window} without an attention mask that applies it"
            )
        if is_causal and q_len > 1:
            # what scaled_dot_product_attention(is_causal=True) does: top-left aligned
            future = torch.ones(q_len, k_len, dtype=torch.bool, device=scores.device).triu(1)
            scores = scores.masked_fill(future, torch.finfo(scores.dtype).min)
    if sinks is not None:
        # gpt-oss: the sink is one more logit per head; its share of the softmax goes nowhere
        sink = sinks.reshape(1, -1, 1, 1).to(scores.dtype).expand(scores.shape[0], -1, q_len, 1)
        combined = torch.cat([scores, sink], dim=-1)
        combined = combined - combined.max(dim=-1, keepdim=True).values
        return nn.functional.softmax(combined, dim=-1)[..., :-1]
    return nn.functional.softmax(scores, dim=-1)


def _attention_output(module: nn.Module, probs: Probs, value: torch.Tensor, dropout: float) -> torch.Tensor:
    if value.shape[1] != probs.shape[1]:
        value = value.repeat_interleave(probs.shape[1] // value.shape[1], dim=1)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    out = torch.matmul(probs.to(value.dtype), value)  # [batch, heads, q, head_dim]
    return out.transpose(1, 2).contiguous()


def _check_window(mask: torch.Tensor, window: int, q_len: int, k_len: int) -> None:
    """A sliding window is applied by the mask the model built; refuse a mask that does not apply it.
    Query i sits at position k_len - q_len + i; it may see key j only where position - j < window."""
    position = torch.arange(k_len - q_len, k_len, device=mask.device)[:, None]
    far = (position - torch.arange(k_len, device=mask.device)[None, :]) >= window  # [q, k]
    if not bool(far.any()):
        return
    blocked = ~mask if mask.dtype == torch.bool else mask <= torch.finfo(mask.dtype).min / 2
    if not bool(blocked[..., far].all()):
        raise UnsupportedModelError(
            f"unsupported attention: sliding_window={window} is not applied by the attention mask"
        )


def _short(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"<tensor {list(value.shape)}>"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


AttentionInterface.register(ATTENTION_NAME, _attention_forward)
ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, eager_mask)


def check_supported(model: nn.Module) -> None:
    """Raise UnsupportedModelError if the model's attention cannot be hooked."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if adapters.adapter_for(model) is not None:  # inline attention with an adapter: options checked
        adapters.check(model)
        return
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


# ---- edits ------------------------------------------------------------------------------------
@dataclass
class EditContext:
    """What an edit knows about the attention call it edits."""

    layer: int  # the k-th attention call of this forward pass
    origins: Origins  # for each row of `probs`, the input example it came from
    module: nn.Module  # the attention module that called us


class Edit(Protocol):
    """A per-layer change of attention probabilities: `edit(probs, context) -> probs`.
    An optional `start_pass()` method is called when a forward pass begins."""

    def __call__(self, probs: Probs, context: EditContext) -> Probs: ...


class Record:
    """Keep each layer's probabilities in `attentions` {layer: [rows, heads, query, key]}, detached.
    rows=N keeps only the first N rows, as a copy, so the other rows' probabilities are freed
    after their layer."""

    def __init__(self, rows: int | None = None):
        self.rows = rows
        self.attentions: dict[int, Probs] = {}

    def start_pass(self) -> None:
        self.attentions.clear()

    def __call__(self, probs: Probs, context: EditContext) -> Probs:
        n = self.rows
        self.attentions[context.layer] = probs.detach() if n is None else probs[:n].detach().clone()
        return probs


@dataclass
class Scale:
    """At `layer`, replace the probabilities of rows [start, start + len(alphas)) by alphas * A
    (A detached). With make_leaf the scaled tensor is a leaf that requires grad (`leaf`): the
    gradient of F with respect to it is the attribution integrand at those alphas."""

    layer: int
    start: int
    alphas: torch.Tensor  # [rows] float32
    make_leaf: bool = True
    leaf: torch.Tensor | None = field(default=None, repr=False)

    def start_pass(self) -> None:
        self.leaf = None

    def __call__(self, probs: Probs, context: EditContext) -> Probs:
        if context.layer != self.layer:
            return probs
        s, r = self.start, self.alphas.shape[0]
        alphas = self.alphas.to(device=probs.device, dtype=probs.dtype)
        scaled = alphas[:, None, None, None] * probs[s : s + r].detach()
        if self.make_leaf:
            scaled.requires_grad_(True)
            self.leaf = scaled
        return torch.cat([probs[:s], scaled, probs[s + r :]], dim=0)


class HeadGate:
    """Multiply each head's probabilities by a gate: `[layers, heads]` (the same for every row) or
    `[examples, layers, heads]` (each row takes its origin example's gates). Gates may require
    grad (Taylor importance)."""

    def __init__(self, gates: HeadTable | ExampleHeadTable):
        self.gates = gates

    def __call__(self, probs: Probs, context: EditContext) -> Probs:
        gates = self.gates
        if gates.dim() == 2:
            rows = gates[context.layer].unsqueeze(0).expand(probs.shape[0], -1)
        else:
            rows = gates[context.origins.to(gates.device), context.layer]  # [rows, heads]
        return probs * rows[:, :, None, None].to(probs.dtype)


class ConnectionGate:
    """Multiply single attention entries by gates: {layer: `[rows, heads, query, key]`} (0 removes
    the connection (head, query, key) for that row; a first dimension of 1 serves every row).
    Layers without an entry are untouched. The row is not renormalised: as with head pruning, the
    query token simply stops receiving that key's value through that head."""

    def __init__(self, gates: dict[int, ConnectionGates] | None = None):
        self.gates = dict(gates or {})

    def __call__(self, probs: Probs, context: EditContext) -> Probs:
        gates = self.gates.get(context.layer)
        if gates is None:
            return probs
        return probs * gates.to(device=probs.device, dtype=probs.dtype)


# ---- the hook ---------------------------------------------------------------------------------
class AttentionHook:
    """Context manager: installs the attattr attention function on `model` and restores it after.

    `edits` are applied in order at every layer. The convenient constructor arguments add, in this
    order: HeadGate(head_gates), Record() (record=True), then `edits`.
    Set between forward passes:
      edits             the list of edits (replace or append freely)
      row_selections    {layer: LongTensor of row indices taken at that layer's entry}
    Read after a forward pass:
      attentions        {layer: [rows, heads, query, key]} of the first Record edit
      leaves            {layer: tensor} of the Scale edits that made a leaf
      row_origin        [rows]: for each row leaving the model, the input example it came from
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        record: bool = False,
        head_gates: HeadTable | ExampleHeadTable | None = None,
        edits: Sequence[Edit | Callable[[Probs, EditContext], Probs]] = (),
    ):
        check_supported(model)
        self.model = model
        self.edits: list = []
        if head_gates is not None:
            self.edits.append(HeadGate(head_gates))
        if record:
            self.edits.append(Record())
        self.edits.extend(edits)
        self.row_selections: dict[int, torch.Tensor] = {}
        self._layer = 0
        self._entries = 0
        self._row_origin: torch.Tensor | None = None  # [rows]: which input example each row came from
        self._batch: int | None = None  # rows of the model's input
        self._selected = False  # whether rows were re-selected in this pass
        self._handles: list = []
        self._token = None
        self._previous_impl = None
        self._adapted: adapters.Installed | None = None  # inline-attention families (adapters.py)

    @property
    def attentions(self) -> dict[int, Probs]:
        for edit in self.edits:
            if isinstance(edit, Record):
                return edit.attentions
        return {}

    @property
    def leaves(self) -> dict[int, torch.Tensor]:
        return {e.layer: e.leaf for e in self.edits if isinstance(e, Scale) and e.leaf is not None}

    @property
    def row_origin(self) -> Origins | None:
        return self._row_origin

    # ---- installation ------------------------------------------------------------------
    def __enter__(self) -> AttentionHook:
        layers = layer_modules(self.model)
        self._adapted = adapters.install(self.model, self.on_attention)
        if self._adapted is None:
            self._previous_impl = self.model.config._attn_implementation
            self.model.set_attn_implementation(ATTENTION_NAME)
        self._token = _ACTIVE.set(self)
        # the base model, not the whole model: a caller may run the base model and apply the
        # output head itself (see objectives.py)
        base = getattr(self.model, "base_model", self.model)
        self._handles.append(base.register_forward_pre_hook(self._on_model_start, with_kwargs=True))
        for layer_module in layers:
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
        if self._adapted is not None:
            self._adapted.remove()
            self._adapted = None
        else:
            self.model.set_attn_implementation(self._previous_impl or "eager")

    # ---- callbacks ---------------------------------------------------------------------
    def _on_model_start(self, module, args, kwargs):
        self._layer = 0
        self._entries = 0
        for edit in self.edits:
            start = getattr(edit, "start_pass", None)
            if start is not None:
                start()
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

        shared = self._adapted.shared_kwargs if self._adapted is not None else ()
        new_kwargs = {k: v if k in shared else select(v) for k, v in kwargs.items() if k != "hidden_states"}
        if args:
            return (hidden, *select(rest_args)), new_kwargs
        new_kwargs["hidden_states"] = hidden
        return args, new_kwargs

    def on_attention(self, probs: Probs, module: nn.Module) -> Probs:
        context = EditContext(self._layer, self._origins(probs), module)
        self._layer += 1
        for edit in self.edits:
            probs = edit(probs, context)
        return probs

    def _origins(self, probs: Probs) -> Origins:
        origin = self._row_origin
        if origin is None or origin.shape[0] != probs.shape[0]:
            return torch.arange(probs.shape[0], device=probs.device)
        return origin


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
        token = _ACTIVE.set(None)  # the probe edits nothing, whatever hook is active around it
        try:
            return _attention_forward(module, *a, **k)
        finally:
            _ACTIVE.reset(token)

    AttentionInterface.register("attattr-probe", spy)
    ALL_MASK_ATTENTION_FUNCTIONS.register("attattr-probe", eager_mask)
    # an inline-attention family reports its attention calls through its adapter instead
    adapted = adapters.install(model, lambda probs, module: (called.append(module), probs)[1])
    try:
        if adapted is None:
            model.set_attn_implementation("attattr-probe")
        device = next(model.parameters()).device
        ids = torch.tensor([[_probe_token(model)] * 3], device=device)
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        if adapted is None:
            model.set_attn_implementation(previous or "eager")
        else:
            adapted.remove()
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
    vocab = getattr(config, "vocab_size", None)
    for name in ("cls_token_id", "bos_token_id", "pad_token_id"):
        value = getattr(config, name, None)
        if isinstance(value, int) and (not isinstance(vocab, int) or 0 <= value < vocab):
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


def key_value_heads(model: nn.Module) -> int:
    """Key/value heads per layer: fewer than the query heads under grouped-query attention (each
    serves `heads // kv_heads` consecutive query heads), as many without it."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    value = getattr(config, "num_key_value_heads", None)
    return value if isinstance(value, int) and value > 0 else model_num_heads(model)


def group_by_key_value(values: torch.Tensor, kv_heads: int, reduce: str = "sum") -> torch.Tensor:
    """Per-query-head tensors `[layers, heads, ...]` aggregated per key/value group
    `[layers, kv_heads, ...]` ("sum": attributions add up over a group's heads; "mean": attention).
    Query head h belongs to group h // (heads // kv_heads), as transformers' `repeat_kv` lays them out."""
    heads = values.shape[1]
    if kv_heads < 1 or heads % kv_heads:
        raise InputError(f"cannot group {heads} query heads into {kv_heads} key/value heads")
    grouped = values.reshape(values.shape[0], kv_heads, heads // kv_heads, *values.shape[2:])
    if reduce == "sum":
        return grouped.sum(dim=2)
    if reduce == "mean":
        return grouped.mean(dim=2)
    raise InputError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
