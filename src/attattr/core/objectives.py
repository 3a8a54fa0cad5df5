"""F, the scalar an attribution explains (docs/method.md §1, §5): named objectives, one value per
row inside the model.

An attribution forks rows inside the model (scaled copies of each example from a target layer up),
so an objective reads the outputs of every row and knows each row's origin example. Two pieces:

* a **readout** runs the model on an encoded batch under an active `AttentionHook` and returns
  `ModelOutputs`: the rows' last hidden states, their origins and, for classifiers, their class
  logits. The readout applies the output head per row itself, by origin, so that heads that pool
  by the input batch stay exact (decoder classifiers read the last non-padding token of each
  input: `logits[arange(input_ids.shape[0]), last]` in transformers would drop the forked rows).
* an **objective** (registered by name in `OBJECTIVES`) picks a target per example from the
  unperturbed rows (`resolve`) and computes F for every row (`__call__`).

Registered today: "prob", "logit", "logprob" -- the probability, logit or log-probability of a class
(the predicted one, each example's gold label, or a given index).

Causal language models (docs/method.md §5, docs/decoders.md) have their own objective,
`TokenObjective`, made by `make_objective(..., model=model)`: the readout runs the base model only,
and the objective applies the language-model head to the hidden states of the positions F reads,
and, where F needs logits only (logit, logit-diff), to the vocabulary columns it reads: never logits
for every position and the whole vocabulary. Its outputs:

  prob, logprob   p(y_1..y_T | prompt) and its log, teacher-forced: a next token (T = 1) or a forced
                  continuation (the tokens y_1..y_{T-1} are appended to the prompt; F = sum_t
                  log p(y_t | prompt, y_<t), prob = exp of that)
  logit           the logit of one next token
  logit-diff      logit(target) - logit(foil) at the predicting position (contrastive). Multi-token
                  target and foil: their common leading tokens are forced after the prompt, and F
                  compares their first differing tokens at the position that predicts them
  prob-diff       sum p(target alternatives) - sum p(foil alternatives) at the predicting position
                  (single-token alternatives, e.g. greater-than's digits)
"""

from __future__ import annotations

import inspect
import weakref
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch
from torch import nn

from .errors import InputError, UnsupportedModelError
from .hooks import AttentionHook
from .shapes import ClassProbabilities, ExampleValues, Hidden, Logits, Origins, RowValues, TokenIds


# ---- model outputs and readouts ---------------------------------------------------------------
@dataclass
class ModelOutputs:
    """One forward pass as objectives read it: one entry per row inside the model."""

    model: nn.Module
    origins: Origins  # [rows]: the input example of each row
    hidden: Hidden | None  # [rows, seq, hidden]: the base model's last hidden states
    logits: Logits | None = None  # [rows, classes] float32, for classifiers
    input_ids: TokenIds | None = None  # [examples, seq]
    attention_mask: TokenIds | None = None  # [examples, seq]

    @property
    def num_rows(self) -> int:
        return int(self.origins.shape[0])

    def rows(self, index: slice | torch.Tensor) -> ModelOutputs:
        """The same outputs restricted to some rows (e.g. the first `examples` unperturbed rows)."""
        return replace(
            self,
            origins=self.origins[index],
            hidden=None if self.hidden is None else self.hidden[index],
            logits=None if self.logits is None else self.logits[index],
        )

    def class_logits(self) -> Logits:
        if self.logits is None:
            raise UnsupportedModelError(
                f"{type(self.model).__name__} has no sequence-classification head: class objectives need one"
            )
        return self.logits


class Readout(ABC):
    """Runs the model on an encoded batch (under an active hook) and reads its outputs per row."""

    @abstractmethod
    def __call__(
        self, model: nn.Module, inputs: Mapping[str, torch.Tensor], hook: AttentionHook
    ) -> ModelOutputs: ...


class OwnHeadReadout(Readout):
    """Encoder classifiers (BERT, RoBERTa, DistilBERT, ELECTRA, ALBERT, ...): the model's own head
    reads each row's own first position (or the model's own pooler over it), so the forked rows
    pass through it one by one. The whole model runs; a head that returned a different number of
    rows than reached it would not be per-row, and is refused."""

    def __call__(self, model, inputs, hook) -> ModelOutputs:
        captured: list[torch.Tensor] = []
        base = getattr(model, "base_model", model)
        handle = base.register_forward_hook(lambda m, a, out: captured.append(_first(out)))
        try:
            out = model(**_accepted(model, inputs))
        finally:
            handle.remove()
        origins = _origins(hook, inputs)
        logits = getattr(out, "logits", None)
        if logits is None:
            raise UnsupportedModelError(
                f"unsupported model {type(model).__name__}: it has no sequence-classification head"
            )
        if logits.shape[0] != origins.shape[0]:
            raise UnsupportedModelError(
                f"unsupported model {type(model).__name__}: its classification head returned {logits.shape[0]} "
                f"rows for {origins.shape[0]} rows inside the model (it does not classify row by row)"
            )
        return ModelOutputs(
            model,
            origins,
            captured[-1] if captured else None,
            logits.float(),
            inputs.get("input_ids"),
            inputs.get("attention_mask"),
        )


def _base_hidden(model, inputs, hook) -> tuple[Hidden, Origins]:
    """Run the decoder's base model (no key-value cache: it would keep every layer's keys alive):
    the last hidden states of every row, and the example each row was forked from."""
    base = model.base_model
    base_inputs = _accepted(base, inputs)
    if "use_cache" in inspect.signature(base.forward).parameters:
        base_inputs["use_cache"] = False
    hidden = _first(base(**base_inputs))  # [rows, seq, hidden]
    return hidden, _origins(hook, inputs).to(hidden.device)


class LastTokenReadout(Readout):
    """Decoder classifiers (Llama, Qwen, Mistral, Gemma, Phi-3, GPT-2 ... ForSequenceClassification):
    the base model runs, then each row's hidden state at its origin example's last token goes
    through the model's `score` layer. The last token is what the model itself pools when it runs
    the example alone: the rightmost real token that is not the padding token (see
    `last_token_positions`)."""

    def __call__(self, model, inputs, hook) -> ModelOutputs:
        hidden, origins = _base_hidden(model, inputs, hook)  # [rows, seq, hidden], [rows]
        input_ids, mask = inputs["input_ids"], inputs.get("attention_mask")
        last = last_token_positions(input_ids, mask, _pad_token_id(model))  # [examples]
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last.to(hidden.device)[origins]]
        logits = model.score(pooled)  # [rows, classes]
        return ModelOutputs(model, origins, hidden, logits.float(), input_ids, mask)


class MeanPoolReadout(Readout):
    """ModernBERT classifiers with `classifier_pooling="mean"` (the released checkpoints' setting):
    transformers averages the last hidden states over the input batch's attention mask, one row per
    input, which does not fit the forked rows. The base model runs, each row is averaged over its
    origin example's mask, then the model's own head, dropout and classifier apply, as in its forward."""

    def __call__(self, model, inputs, hook) -> ModelOutputs:
        hidden, origins = _base_hidden(model, inputs, hook)  # [rows, seq, hidden], [rows]
        mask = inputs.get("attention_mask")
        if mask is None:
            mask = torch.ones(inputs["input_ids"].shape, dtype=torch.long, device=hidden.device)
        rows_mask = mask.to(hidden.device)[origins]  # [rows, seq]
        pooled = (hidden * rows_mask.unsqueeze(-1)).sum(dim=1) / rows_mask.sum(dim=1, keepdim=True)
        logits = model.classifier(model.drop(model.head(pooled)))  # [rows, classes]
        return ModelOutputs(model, origins, hidden, logits.float(), inputs.get("input_ids"), mask)


def is_mean_pooling_modernbert(model: nn.Module) -> bool:
    config = getattr(model, "config", None)
    return (
        getattr(config, "model_type", None) == "modernbert"
        and getattr(config, "classifier_pooling", None) == "mean"
        and all(isinstance(getattr(model, name, None), nn.Module) for name in ("head", "drop", "classifier"))
    )


class CausalLMReadout(Readout):
    """Causal LMs: the base model runs and every row's last hidden states are returned; the
    objective applies the language-model head itself, at the positions it reads."""

    def __call__(self, model, inputs, hook) -> ModelOutputs:
        hidden, origins = _base_hidden(model, inputs, hook)  # [rows, seq, hidden], [rows]
        return ModelOutputs(
            model, origins, hidden, None, inputs.get("input_ids"), inputs.get("attention_mask")
        )


def readout_for(model: nn.Module) -> Readout:
    """The readout that reads `model`'s rows exactly."""
    if is_last_token_classifier(model):
        return LastTokenReadout()
    if is_causal_lm(model):
        return CausalLMReadout()
    if is_mean_pooling_modernbert(model):
        return MeanPoolReadout()
    return OwnHeadReadout()


CAUSAL_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def is_causal_lm(model: nn.Module) -> bool:
    """A decoder with its language-model head (LlamaForCausalLM, GPT2LMHeadModel, ...)."""
    return (
        type(model).__name__.endswith(CAUSAL_LM_SUFFIXES)
        and hasattr(model, "get_output_embeddings")
        and model.get_output_embeddings() is not None
        and getattr(model, "base_model", model) is not model
    )


def is_last_token_classifier(model: nn.Module) -> bool:
    """Decoder sequence classifiers of transformers: a `score` linear layer over the last token."""
    return (
        type(model).__name__.endswith("ForSequenceClassification")
        and isinstance(getattr(model, "score", None), nn.Linear)
        and getattr(model, "base_model", model) is not model
        and not getattr(model.config, "is_encoder_decoder", False)
    )


def last_token_positions(
    input_ids: TokenIds, attention_mask: TokenIds | None, pad_token_id: int | None
) -> ExampleValues:
    """Per example, the position a decoder classifier pools: the rightmost real token (attention
    mask 1) that is not the padding token -- what transformers' last-token pooling picks when the
    example runs alone, with either padding side. An example made only of padding tokens pools
    its first real token."""
    real = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    keep = real if pad_token_id is None else real & (input_ids != pad_token_id)
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    last = torch.where(keep, positions, -1).amax(dim=1)
    first_real = torch.where(real, positions, input_ids.shape[1]).amin(dim=1)
    return torch.where(last >= 0, last, first_real.clamp(max=input_ids.shape[1] - 1))


def _pad_token_id(model: nn.Module) -> int | None:
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    value = getattr(text, "pad_token_id", None)
    return value if isinstance(value, int) else None


def _accepted(module: nn.Module, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    params = inspect.signature(module.forward).parameters
    return {k: v for k, v in inputs.items() if k in params}


def _first(out) -> torch.Tensor:
    """The last hidden states of a base model's output (a ModelOutput or a tuple)."""
    return out[0]


def _origins(hook: AttentionHook, inputs: Mapping[str, torch.Tensor]) -> Origins:
    origin = hook.row_origin
    if origin is None:
        first = next(v for v in inputs.values() if isinstance(v, torch.Tensor))
        origin = torch.arange(first.shape[0])
    return origin


# ---- objectives -------------------------------------------------------------------------------
class Objective(ABC):
    """F: one scalar per row. `resolve` fixes a target per example from the unperturbed rows;
    `__call__` evaluates F on every row, each with its origin example's target."""

    name: ClassVar[str]
    target: str | int  # what the objective targets ("predicted", "gold", an index, ...)

    @property
    def target_mode(self) -> str:
        return self.target if isinstance(self.target, str) else "index"

    def readout(self, model: nn.Module) -> Readout:
        return readout_for(model)

    def predictions(self, outputs: ModelOutputs) -> tuple[ClassProbabilities, ExampleValues]:
        """What the model predicts for the given (unperturbed) rows: class probabilities and the
        predicted class."""
        probabilities = torch.softmax(outputs.class_logits(), dim=-1)
        return probabilities, probabilities.argmax(dim=-1)

    def check(self, model: nn.Module) -> None:  # noqa: B027 (optional hook)
        """Refuse settings this model cannot serve (InputError)."""

    def check_labels(self, labels: Sequence[int | None], ids: Sequence[str | None], model: nn.Module) -> None:  # noqa: B027
        """Refuse examples this objective cannot serve (InputError)."""

    def expand(self, items: Sequence, tokenizer) -> list:
        """The inputs to attribute, one per result (decoders: per-token copies); default: `items`."""
        return list(items)

    def encode(self, tokenizer, items: Sequence, *, max_length: int, truncate: bool | None, device):
        """The batch's model inputs and, per item, whether it was truncated: texts and pairs
        (`encoding.encode_batch`; truncated unless truncate=False)."""
        from .encoding import encode_batch  # encoding imports this module

        pairs = [it.text_pair for it in items]
        return encode_batch(
            tokenizer,
            [it.text for it in items],
            pairs if any(p is not None for p in pairs) else None,
            max_length=max_length,
            truncate=True if truncate is None else truncate,
            device=device,
        )

    def annotate(self, attribution, index: int) -> None:  # noqa: B027 (optional hook)
        """Complete the result of the batch's item `index` with what only the objective knows."""

    def row_bytes(self, model: nn.Module) -> int:
        """Bytes one row needs for F beyond the model's activations (class logits: negligible)."""
        return 0

    @abstractmethod
    def resolve(self, outputs: ModelOutputs, labels: Sequence[int | None]) -> ExampleValues:
        """Targets [examples] from the unperturbed rows (one per example, in example order)."""

    @abstractmethod
    def __call__(self, outputs: ModelOutputs, targets: ExampleValues) -> RowValues:
        """F for every row, with its origin example's target."""


class ClassObjective(Objective):
    """F is a function of one class's logit; the class is the predicted one ("predicted"), each
    example's gold label ("gold") or a fixed index."""

    def __init__(self, target: str | int = "predicted"):
        if isinstance(target, bool) or not (isinstance(target, int) or target in ("predicted", "gold")):
            raise InputError(f"target must be 'predicted', 'gold' or a class index, got {target!r}")
        self.target = target

    def check(self, model: nn.Module) -> None:
        num_labels = model.config.num_labels
        if isinstance(self.target, int) and not 0 <= self.target < num_labels:
            raise InputError(f"target class {self.target} out of range: the model has {num_labels} classes")

    def check_labels(self, labels, ids, model) -> None:
        if self.target != "gold":
            return
        missing = [i for i, label in zip(ids, labels, strict=True) if label is None]
        if missing:
            raise InputError(f"target='gold' needs a label for every example; missing for {missing[:3]}")
        num_labels = model.config.num_labels
        bad = [label for label in labels if not 0 <= int(label) < num_labels]
        if bad:
            raise InputError(f"gold label {bad[0]} out of range: the model has {num_labels} classes")

    def resolve(self, outputs: ModelOutputs, labels: Sequence[int | None]) -> ExampleValues:
        device = outputs.class_logits().device
        if self.target == "predicted":
            return self.predictions(outputs)[1]
        if self.target == "gold":
            return torch.tensor([int(x) for x in labels], device=device)
        return torch.full((outputs.num_rows,), int(self.target), device=device)

    def __call__(self, outputs: ModelOutputs, targets: ExampleValues) -> RowValues:
        logits = outputs.class_logits()
        return self.from_logits(logits, targets.to(logits.device)[outputs.origins.to(logits.device)])

    def from_logits(self, logits: Logits, targets: torch.Tensor) -> RowValues:
        """F per row from class logits [rows, classes] and each row's target class [rows]."""
        return self.transform(logits.float()).gather(1, targets.reshape(-1, 1).to(logits.device)).squeeze(1)

    @abstractmethod
    def transform(self, logits: Logits) -> Logits:
        """The per-class values F picks from."""


OBJECTIVES: dict[str, type[Objective]] = {}


def register(cls: type[Objective]) -> type[Objective]:
    """Class decorator: make an objective available by its `name`."""
    OBJECTIVES[cls.name] = cls
    return cls


@register
class ClassProbability(ClassObjective):
    """The target class's softmax probability (the paper's F)."""

    name = "prob"

    def transform(self, logits: Logits) -> Logits:
        return torch.softmax(logits, dim=-1)


@register
class ClassLogit(ClassObjective):
    name = "logit"

    def transform(self, logits: Logits) -> Logits:
        return logits


@register
class ClassLogProbability(ClassObjective):
    name = "logprob"

    def transform(self, logits: Logits) -> Logits:
        return torch.log_softmax(logits, dim=-1)


def make_objective(
    name: str | None,
    target: Any = "predicted",
    *,
    model: nn.Module | None = None,
    foil: Any = None,
    per_token: bool = False,
    **options,
) -> Objective:
    """The objective F `name` with its target (and any options it takes).

    With `model` a causal LM: a `TokenObjective` (outputs prob, logprob, logit, logit-diff,
    prob-diff; name None picks the default for the target: logit-diff with a foil, prob-diff with
    alternatives, logprob for a continuation text, prob for the top prediction or a token id).
    Otherwise the registered class objective (name None: "prob"); a foil or per_token is refused."""
    if model is not None and is_causal_lm(model):
        return TokenObjective(name, "predicted" if target is None else target, foil=foil, per_token=per_token)
    what = f"{type(model).__name__} is a sequence classifier" if model is not None else "class objectives"
    if foil is not None:
        raise InputError(f"a foil applies to causal language models only: {what} (its outputs are classes)")
    if per_token:
        raise InputError(f"per-token attribution applies to causal language models only: {what}")
    name = "prob" if name is None else name
    cls = OBJECTIVES.get(name) if isinstance(name, str) else None
    if cls is None:
        extra = " (logit-diff and prob-diff are for causal language models)" if name in TOKEN_OUTPUTS else ""
        raise InputError(f"unknown output {name!r}; choose one of: {', '.join(OBJECTIVES)}{extra}")
    return cls("predicted" if target is None else target, **options)


def class_values(logits: Logits, target: int | torch.Tensor, output: str) -> RowValues:
    """F per row of class logits [rows, classes] for one class (or one per row), by objective name."""
    objective = make_objective(output, "predicted")
    if not isinstance(objective, ClassObjective):
        raise InputError(f"output {output!r} is not a class objective")
    targets = torch.as_tensor(target, device=logits.device).expand(logits.shape[0])
    return objective.from_logits(logits, targets)


# ---- causal language models ----------------------------------------------------------------------
TOKEN_OUTPUTS = ("prob", "logprob", "logit", "logit-diff", "prob-diff")
TOP_K = 10  # next-token predictions kept with an attribution

# per model: whether its language-model head is what `lm_logits` computes (checked once)
_HEAD_CHECKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def lm_logits(model: nn.Module, hidden: torch.Tensor, columns: torch.Tensor | None = None) -> torch.Tensor:
    """The model's next-token logits (float32) from last hidden states `[..., hidden]`: all
    vocabulary columns `[..., vocab]`, or only `columns` `[..., K]` (`[..., K]` ids) -> `[..., K]`.
    Applies the head's bias and the final transforms transformers applies after it (Gemma-2/3's
    `final_logit_softcapping`, Cohere's `logit_scale`, Granite's `logits_scaling`); `check_lm_head`
    verifies once per model that nothing else happens there."""
    head = model.get_output_embeddings()
    if columns is None:
        logits = head(hidden)
    else:
        weight = head.weight[columns]  # [..., K, hidden]
        logits = torch.einsum("...h,...kh->...k", hidden, weight.to(hidden.dtype))
        if getattr(head, "bias", None) is not None:
            logits = logits + head.bias[columns].to(logits.dtype)
    logits = logits.float()
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    scale = getattr(config, "logit_scale", None)
    if isinstance(scale, int | float) and not isinstance(scale, bool):
        logits = logits * scale
    scaling = getattr(config, "logits_scaling", None)
    if isinstance(scaling, int | float) and not isinstance(scaling, bool) and scaling:
        logits = logits / scaling
    return logits


def check_lm_head(model: nn.Module) -> None:
    """Refuse (UnsupportedModelError) a causal LM whose logits are not `lm_logits` of its base
    model's last hidden states: reading only some positions and columns would give wrong numbers."""
    if model in _HEAD_CHECKED:
        return
    device = next(model.parameters()).device
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    vocab = int(getattr(config, "vocab_size", 2) or 2)
    ids = torch.tensor([[1 % vocab, 2 % vocab, 3 % vocab]], device=device)
    base = model.base_model
    with torch.no_grad():
        own = model(input_ids=ids, use_cache=False).logits.float()
        ours = lm_logits(model, _first(base(input_ids=ids, use_cache=False)))
    if own.shape != ours.shape or not torch.allclose(own, ours, atol=1e-4, rtol=1e-4):
        raise UnsupportedModelError(
            f"unsupported model {type(model).__name__}: its language-model head computes more than a "
            "linear layer with the soft-capping or scaling attattr knows, so attattr cannot read only the "
            "logits an objective needs"
        )
    _HEAD_CHECKED[model] = True


@dataclass(frozen=True)
class TokenTarget:
    """What F reads for one input, as token ids.

    tokens: the continuation y_1..y_T (prob, logprob, logit), the target token (logit-diff) or the
      target alternatives (prob-diff); empty until resolved when the target is the top prediction.
    foils: the foil token (logit-diff) or the foil alternatives (prob-diff).
    forced: token ids appended after the prompt (teacher forcing).
    token_index / length: for per-token attributions, which token of a continuation of `length`."""

    tokens: tuple[int, ...] = ()
    foils: tuple[int, ...] = ()
    forced: tuple[int, ...] = ()
    target_text: Any = None
    foil_text: Any = None
    token_index: int | None = None
    length: int | None = None


@dataclass
class PromptItem:
    """One input of a causal LM as the engine reads it: the prompt and its resolved target."""

    id: str | None
    text: str
    target: TokenTarget
    text_pair: None = None
    label: None = None


@dataclass
class _Batch:
    """The batch being attributed: per input, the positions F reads and the columns there.
    positions [examples, P]; columns, weights [examples, P, K] (weight 0: padding)."""

    specs: list[TokenTarget]
    positions: torch.Tensor
    columns: torch.Tensor
    weights: torch.Tensor
    offsets: torch.Tensor  # [examples]: the first real position (left padding)
    prompt_lengths: list[int]
    top: tuple[torch.Tensor, torch.Tensor] | None = None  # top-k (probabilities, ids) [examples, k]
    shown: torch.Tensor | None = None  # [examples, 2]: p(first target token), p(first foil token)
    extra: dict[str, Any] = field(default_factory=dict)


class TokenObjective(Objective):
    """F for a causal LM (see the module docstring for the outputs).

    target: "predicted" (the top next token), a token id, a continuation text (" Paris, the"), a
      tuple of single-token alternatives, or "gold" (each example's own `target` and `foil`, as
      prompt sets carry them). foil: a text, a token id or alternatives (contrastive).
    per_token: one attribution per token of a continuation target (F_t = log p(y_t | prompt, y_<t),
      or its prob or logit), instead of one for the sum.

    The engine's order of calls per batch: `encode` (stores the batch), `predictions`, `resolve`,
    then `__call__` on the rows of every pass, and `annotate` on each result."""

    def __init__(
        self, output: str | None, target: Any = "predicted", *, foil: Any = None, per_token: bool = False
    ):
        if output is not None and output not in TOKEN_OUTPUTS:
            raise InputError(
                f"unknown output {output!r} for a causal language model; choose one of: {', '.join(TOKEN_OUTPUTS)}"
            )
        if isinstance(target, bool) or not isinstance(target, str | int | tuple | list):
            raise InputError(
                f"target must be 'predicted', 'gold', a token id, a text or alternatives, got {target!r}"
            )
        if isinstance(target, str) and target == "":
            raise InputError("the target is empty")
        if isinstance(foil, str) and foil == "":
            raise InputError("the foil is empty")
        self.target = tuple(target) if isinstance(target, list) else target
        self.foil = tuple(foil) if isinstance(foil, list) else foil
        self.per_token = bool(per_token)
        self.output = output
        if output is None and target != "gold":
            self.output = default_output(self.target, self.foil)
        if target == "predicted" and per_token:
            raise InputError(
                "per-token attribution needs a continuation target (a text), not the top prediction"
            )
        if self.foil is not None and target == "gold":
            raise InputError(
                "a foil given with target='gold' would replace every example's own foil; leave it out"
            )
        self._batch: _Batch | None = None
        self._tokenizer = None

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.output or "logprob"

    @property
    def target_mode(self) -> str:
        return self.target if self.target in ("predicted", "gold") else "given"

    def readout(self, model: nn.Module) -> Readout:
        return CausalLMReadout()

    def check(self, model: nn.Module) -> None:
        if not is_causal_lm(model):
            raise InputError(f"{type(model).__name__} is not a causal language model")
        check_lm_head(model)
        vocab = model.get_output_embeddings().weight.shape[0]
        for what, value in (("target", self.target), ("foil", self.foil)):
            if isinstance(value, int) and not isinstance(value, bool) and not 0 <= value < vocab:
                raise InputError(f"{what} token id {value} out of range: the vocabulary has {vocab} tokens")

    # ---- items ----------------------------------------------------------------------------------
    def expand(self, items: Sequence, tokenizer) -> list[PromptItem]:
        """Resolve every item's target and foil to token ids (InputError naming the example for a
        target that tokenises to nothing, a foil equal to the target, ...); per_token: one item per
        target token."""
        out: list[PromptItem] = []
        outputs: set[str] = set()
        for it in items:
            where = f" (example {it.id})" if getattr(it, "id", None) is not None else ""
            if getattr(it, "text_pair", None) is not None:
                raise InputError(f"a causal language model reads one prompt, not a text pair{where}")
            if self.target == "gold":
                target, foil = getattr(it, "target", None), getattr(it, "foil", None)
                if target is None:
                    raise InputError(f"target='gold' needs each example's target{where}")
                output = self.output or default_output(target, foil)
            else:
                target, foil, output = self.target, self.foil, self.output
            outputs.add(output)
            spec = _resolve_texts(tokenizer, it.text, target, foil, output, where)
            if self.per_token:
                if (
                    output not in ("prob", "logprob", "logit")
                    or isinstance(target, tuple)
                    or foil is not None
                ):
                    raise InputError(
                        f"per-token attribution takes a continuation target without a foil{where}"
                    )
                y = spec.tokens
                for t in range(len(y)):
                    token = TokenTarget((y[t],), (), tuple(y[:t]), target, None, t, len(y))
                    out.append(PromptItem(it.id, it.text, token))
            else:
                if output == "logit" and len(spec.tokens) > 1:
                    raise InputError(
                        f"output 'logit' reads one token, and the target {target!r} is {len(spec.tokens)} tokens; "
                        f"use logprob or prob (the whole continuation), or per-token attribution{where}"
                    )
                out.append(PromptItem(it.id, it.text, spec))
        if len(outputs) > 1:
            raise InputError(
                f"the examples need different outputs ({', '.join(sorted(outputs))}); give output="
            )
        if outputs and self.output is None:
            self.output = outputs.pop()
        return out

    def encode(self, tokenizer, items: Sequence[PromptItem], *, max_length: int, truncate, device):
        """The batch's inputs (prompt + forced tokens, `encoding.encode_prompts`); keeps what F
        reads for `predictions`, `resolve`, `__call__` and `annotate`."""
        from .encoding import encode_prompts  # encoding imports this module

        items = [it if isinstance(it, PromptItem) else self.expand([it], tokenizer)[0] for it in items]
        specs = [it.target for it in items]
        enc, cut = encode_prompts(
            tokenizer,
            [it.text for it in items],
            [s.forced for s in specs],
            max_length=max_length,
            truncate=bool(truncate),
            device=device,
        )
        self._batch = _build_batch(specs, enc["attention_mask"], enc["prompt_length"].tolist(), self.name)
        self._tokenizer = tokenizer
        return enc, cut

    def row_bytes(self, model: nn.Module) -> int:
        """Bytes one row needs for F beyond the model's activations: the logits at the positions
        it reads (all columns, their softmax and gradient; or only the columns it reads)."""
        b = self._batch
        positions = 1 if b is None else int(b.positions.shape[1])
        columns = 1 if b is None else int(b.columns.shape[2])
        vocab = model.get_output_embeddings().weight.shape[0]
        hidden = model.get_output_embeddings().weight.shape[1]
        if self.name in ("logit", "logit-diff"):
            return int(positions * columns * (hidden + 2) * 4 * 2)
        return int(positions * vocab * 4 * 4)

    # ---- values ---------------------------------------------------------------------------------
    def _batch_or_fail(self) -> _Batch:
        if self._batch is None:
            raise RuntimeError("TokenObjective.encode must run before the objective reads outputs")
        return self._batch

    def _hidden_at(self, outputs: ModelOutputs, positions: torch.Tensor) -> torch.Tensor:
        """`[rows, P, hidden]`: each row's hidden states at its origin example's positions `[examples, P]`."""
        hidden = outputs.hidden
        origins = outputs.origins.to(hidden.device)
        pos = positions.to(hidden.device)[origins]  # [rows, P]
        return hidden.gather(1, pos[..., None].expand(-1, -1, hidden.shape[-1]))

    def predictions(self, outputs: ModelOutputs) -> tuple[torch.Tensor, ExampleValues]:
        """The top next tokens at the predicting position (the first position F reads):
        probabilities `[examples, k]` and, as the prediction, the top token id `[examples]`."""
        b = self._batch_or_fail()
        h = self._hidden_at(outputs, b.positions[:, :1])[:, 0]  # [examples, hidden]
        probs = torch.softmax(lm_logits(outputs.model, h), dim=-1)  # [examples, vocab]
        top_p, top_i = probs.topk(min(TOP_K, probs.shape[-1]), dim=-1)
        b.top = (top_p.cpu(), top_i.cpu())
        b.extra["first_probs"] = probs  # resolve needs it for a top-prediction target
        b.shown = _target_and_foil_mass(probs, b)
        return top_p, top_i[:, 0]

    def resolve(self, outputs: ModelOutputs, labels: Sequence[Any]) -> ExampleValues:
        """The first target token of each example `[examples]`; a top-prediction target is chosen
        here from the unperturbed rows."""
        b = self._batch_or_fail()
        if self.target == "predicted":
            if b.top is None:
                self.predictions(outputs)
            top = b.top[1][:, 0]
            for i, spec in enumerate(b.specs):
                if spec.foils and int(top[i]) == spec.foils[0]:
                    raise InputError(
                        f"the foil {spec.foil_text!r} is the model's top prediction, the target: give the target"
                    )
                b.specs[i] = replace(spec, tokens=(int(top[i]),))
            b.columns[:, 0, 0] = top.to(b.columns.device)
            probs = b.extra.get("first_probs")
            if probs is not None:
                b.shown = _target_and_foil_mass(probs, b)
        b.extra.pop("first_probs", None)
        return b.columns[:, 0, 0].clone()

    def __call__(self, outputs: ModelOutputs, targets: ExampleValues) -> RowValues:
        b = self._batch_or_fail()
        h = self._hidden_at(outputs, b.positions)  # [rows, P, hidden]
        origins = outputs.origins.to(h.device)
        columns = b.columns.to(h.device)[origins]  # [rows, P, K]
        weights = b.weights.to(h.device)[origins]  # [rows, P, K]
        name = self.name
        if name in ("logit", "logit-diff"):
            return (lm_logits(outputs.model, h, columns) * weights).sum(dim=(1, 2))
        logits = lm_logits(outputs.model, h)  # [rows, P, vocab]: only the positions F reads
        if name == "prob-diff":
            return (torch.softmax(logits, dim=-1).gather(2, columns) * weights).sum(dim=(1, 2))
        logprob = (torch.log_softmax(logits, dim=-1).gather(2, columns) * weights).sum(dim=(1, 2))
        return logprob.exp() if name == "prob" else logprob

    def correct(self, outputs: ModelOutputs) -> torch.Tensor:
        """Per row, whether the model gets the example right: the metric above 0 (logit-diff,
        prob-diff); the first target token the top prediction at the predicting position (prob,
        logprob, logit)."""
        b = self._batch_or_fail()
        if self.name in ("logit-diff", "prob-diff"):
            return self(outputs, b.columns[:, 0, 0]) > 0
        h = self._hidden_at(outputs, b.positions[:, :1])[:, 0]  # [rows, hidden]
        origins = outputs.origins.to(h.device)
        return lm_logits(outputs.model, h).argmax(dim=-1) == b.columns[:, 0, 0].to(h.device)[origins]

    # ---- results --------------------------------------------------------------------------------
    def annotate(self, attribution, index: int) -> None:
        """Set what the attribution of the batch's input `index` explains: the target and foil
        tokens, the positions F read, the top next tokens (`Attribution.decoder`)."""
        b = self._batch_or_fail()
        tok = self._tokenizer
        spec = b.specs[index]
        offset = int(b.offsets[index])

        def tokens(ids):
            ids = [int(i) for i in ids]
            return {
                "ids": ids,
                "tokens": tok.convert_ids_to_tokens(ids),
                "text": "".join(tok.decode([i]) for i in ids),
            }

        real = b.weights[index].abs().sum(-1) > 0  # [P]
        positions = [
            int(p) - offset for p, r in zip(b.positions[index].tolist(), real.tolist(), strict=True) if r
        ]
        kind = {
            "logit-diff": "contrastive",
            "prob-diff": "alternatives",
        }.get(self.name, "continuation" if len(spec.tokens) > 1 else "next-token")
        target = tokens(spec.tokens)
        if spec.target_text is not None and not isinstance(spec.target_text, int):
            target["given"] = (
                list(spec.target_text) if isinstance(spec.target_text, tuple) else spec.target_text
            )
        foil = None
        if spec.foils:
            foil = tokens(spec.foils)
            if spec.foil_text is not None and not isinstance(spec.foil_text, int):
                foil["given"] = list(spec.foil_text) if isinstance(spec.foil_text, tuple) else spec.foil_text
        top = []
        if b.top is not None:
            for p, i in zip(b.top[0][index].tolist(), b.top[1][index].tolist(), strict=True):
                top.append(
                    {
                        "id": int(i),
                        "token": tok.convert_ids_to_tokens(int(i)),
                        "text": tok.decode([int(i)]),
                        "prob": float(p),
                    }
                )
        attribution.output = self.name
        attribution.target = int(spec.tokens[0]) if spec.tokens else -1
        attribution.target_mode = self.target_mode
        if b.top is not None:
            attribution.predicted = int(b.top[1][index, 0])
            attribution.probabilities = [float(x) for x in b.top[0][index]]
        attribution.label_names = None
        attribution.decoder = {
            "objective": kind,
            "output": self.name,
            "prompt_tokens": int(b.prompt_lengths[index]),
            "predicting_position": positions[0] if positions else None,
            "positions": positions,
            "forced": tokens(spec.forced) if spec.forced else None,
            "target": target,
            "foil": foil,
            "token_index": spec.token_index,
            "continuation_tokens": spec.length,
            "target_probability": None if b.shown is None else float(b.shown[index, 0]),
            "foil_probability": None if b.shown is None or not spec.foils else float(b.shown[index, 1]),
            "top": top,
        }


def _target_and_foil_mass(probs: torch.Tensor, b: _Batch) -> torch.Tensor:
    """`[examples, 2]`: at the predicting position, the probability of the target's first token (or
    the sum over target alternatives) and of the foil's."""
    columns = b.columns[:, 0].to(probs.device)  # [examples, K]
    weights = b.weights[:, 0].to(probs.device)
    picked = probs.gather(1, columns)
    target = (picked * (weights > 0)).sum(1)
    foil = (picked * (weights < 0)).sum(1)
    return torch.stack([target, foil], dim=1).cpu()


def default_output(target: Any, foil: Any) -> str:
    """A causal LM's output for a target and foil: prob-diff for alternatives, logit-diff with a
    foil, logprob for a continuation text, prob for the top prediction or a token id."""
    if foil is not None:
        return "prob-diff" if isinstance(foil, tuple) or isinstance(target, tuple) else "logit-diff"
    if isinstance(target, tuple):
        return "prob-diff"
    if isinstance(target, str) and target not in ("predicted", "gold"):
        return "logprob"
    return "prob"


def _resolve_texts(tokenizer, prompt: str, target: Any, foil: Any, output: str, where: str) -> TokenTarget:
    """Token ids of a target and a foil given as texts, ids or alternatives (InputError on bad ones)."""
    from .encoding import continuation_ids

    def ids_of(value, what) -> tuple[int, ...]:
        if isinstance(value, int) and not isinstance(value, bool):
            return (value,)
        if isinstance(value, str):
            ids = continuation_ids(tokenizer, prompt, value)
            if not ids:
                raise InputError(f"the {what} {value!r} tokenises to nothing{where}")
            return tuple(ids)
        raise InputError(f"the {what} must be a text or a token id, got {value!r}{where}")

    def alternatives(value, what) -> tuple[int, ...]:
        values = value if isinstance(value, tuple) else (value,)
        if not values:
            raise InputError(f"the {what} alternatives are empty{where}")
        out = []
        for v in values:
            ids = ids_of(v, what)
            if len(ids) != 1:
                raise InputError(
                    f"the {what} alternative {v!r} is {len(ids)} tokens; alternatives must be one token each{where}"
                )
            out.append(ids[0])
        return tuple(out)

    if output == "prob-diff":
        if foil is None:
            raise InputError(f"output 'prob-diff' needs foil alternatives{where}")
        tokens, foils = alternatives(target, "target"), alternatives(foil, "foil")
        shared = sorted(set(tokens) & set(foils))
        if shared:
            raise InputError(f"the target and the foil share the token(s) {shared}{where}")
        return TokenTarget(tokens, foils, (), target, foil)
    if isinstance(target, tuple) or isinstance(foil, tuple):
        raise InputError(
            f"alternatives (lists of tokens) are scored by output 'prob-diff', not {output!r}{where}"
        )
    if output == "logit-diff":
        if foil is None:
            raise InputError(f"output 'logit-diff' needs a foil{where}")
        foils = ids_of(foil, "foil")
        if target == "predicted":
            return TokenTarget((), foils[:1], (), None, foil)
        tokens = ids_of(target, "target")
        if tokens == foils:
            raise InputError(f"the foil {foil!r} equals the target {target!r} (the same tokens){where}")
        common = 0
        while common < min(len(tokens), len(foils)) and tokens[common] == foils[common]:
            common += 1
        if common == min(len(tokens), len(foils)):
            raise InputError(
                f"the {'foil' if len(foils) < len(tokens) else 'target'}'s tokens begin the other's: "
                f"{target!r} and {foil!r} never differ at one position{where}"
            )
        # the shared leading tokens are forced; F compares the first tokens that differ
        return TokenTarget((tokens[common],), (foils[common],), tokens[:common], target, foil)
    if foil is not None:
        raise InputError(f"a foil is compared by output 'logit-diff' (or 'prob-diff'), not {output!r}{where}")
    if target == "predicted":
        return TokenTarget((), (), (), None, None)
    tokens = ids_of(target, "target")
    # teacher forcing: y_1..y_{T-1} follow the prompt; the last T positions predict y_1..y_T
    return TokenTarget(tokens, (), tokens[:-1], target, None)


def _build_batch(
    specs: list[TokenTarget], mask: torch.Tensor, prompt_lengths: list[int], output: str
) -> _Batch:
    """Positions and columns of a batch: continuation targets read the last T real positions (one
    token each); the others the last real position (target and foil, or the alternatives)."""
    mask = mask.cpu()
    width = mask.shape[1]
    index = torch.arange(width)
    last = torch.where(mask.bool(), index, -1).amax(dim=1)  # [examples]
    first = torch.where(mask.bool(), index, width).amin(dim=1)
    reads: list[list[tuple[int, list[int], list[float]]]] = []
    for b, spec in enumerate(specs):
        end = int(last[b])
        if output in ("logit-diff", "prob-diff"):
            cols = list(spec.tokens) + list(spec.foils)
            if not spec.tokens:  # the top prediction, filled in by resolve
                cols = [0, *cols]
            weights = [1.0] * (len(cols) - len(spec.foils)) + [-1.0] * len(spec.foils)
            reads.append([(end, cols, weights)])
        else:
            ys = list(spec.tokens) or [0]
            start = end - len(ys) + 1
            reads.append([(start + t, [y], [1.0]) for t, y in enumerate(ys)])
    num_pos = max(len(r) for r in reads)
    num_cols = max(len(c) for r in reads for _, c, _ in r)
    positions = torch.zeros(len(specs), num_pos, dtype=torch.long)
    columns = torch.zeros(len(specs), num_pos, num_cols, dtype=torch.long)
    weights = torch.zeros(len(specs), num_pos, num_cols)
    for b, read in enumerate(reads):
        positions[b] = int(last[b])  # unused slots read the last position with weight 0
        for p, (pos, cols, ws) in enumerate(read):
            positions[b, p] = pos
            columns[b, p, : len(cols)] = torch.tensor(cols)
            weights[b, p, : len(ws)] = torch.tensor(ws)
    return _Batch(list(specs), positions, columns, weights, first, list(prompt_lengths))


def describe_decoder(decoder: Mapping[str, Any], tokens: Sequence[str]) -> str:
    """One line saying what F is for a causal LM's attribution (`Attribution.decoder`)."""

    def text(part: Mapping[str, Any] | None) -> str:
        if not part:
            return "?"
        given = part.get("given")
        if isinstance(given, list):
            return "{" + ", ".join(repr(g) for g in given) + "}"
        return repr(part.get("text", ""))

    positions = list(decoder.get("positions") or [])
    p = decoder.get("predicting_position")
    where = f"at position {p} ({tokens[p]!r})" if p is not None and 0 <= p < len(tokens) else ""
    forced = decoder.get("forced")
    after = (
        f", after the forced tokens {forced['text']!r}"
        if forced and decoder.get("token_index") is None
        else ""
    )
    output, kind = decoder.get("output"), decoder.get("objective")
    target, foil = text(decoder.get("target")), text(decoder.get("foil"))
    if output == "logit-diff":
        return f"logit({target}) - logit({foil}) {where}{after}"
    if output == "prob-diff":
        return f"sum p({target}) - sum p({foil}) {where}"
    if decoder.get("token_index") is not None:
        t, total = decoder["token_index"], decoder.get("continuation_tokens")
        return f"{output} of target token {t + 1} of {total}, {target}, {where} (teacher-forced)"
    if kind == "continuation":
        span = f"positions {positions[0]}-{positions[-1]}" if positions else ""
        what = "log p" if output == "logprob" else "p"
        return f"{what}({target} | prompt): {len(positions)} next tokens teacher-forced at {span}"
    return f"{output}({target}) {where}"
