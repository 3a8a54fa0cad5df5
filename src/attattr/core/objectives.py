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
(the predicted one, each example's gold label, or a given index). A decoder objective (next token,
continuation, contrastive) is another `Objective` subclass with its own readout: `ModelOutputs`
carries the hidden states, so it can project only the positions and vocabulary columns it needs.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

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


class LastTokenReadout(Readout):
    """Decoder classifiers (Llama, Qwen, Mistral, Gemma, Phi-3, GPT-2 ... ForSequenceClassification):
    the base model runs, then each row's hidden state at its origin example's last token goes
    through the model's `score` layer. The last token is what the model itself pools when it runs
    the example alone: the rightmost real token that is not the padding token (see
    `last_token_positions`)."""

    def __call__(self, model, inputs, hook) -> ModelOutputs:
        base = model.base_model
        base_inputs = _accepted(base, inputs)
        if "use_cache" in inspect.signature(base.forward).parameters:
            base_inputs["use_cache"] = False  # a cache would keep every layer's keys alive
        hidden = _first(base(**base_inputs))  # [rows, seq, hidden]
        origins = _origins(hook, inputs).to(hidden.device)
        input_ids, mask = inputs["input_ids"], inputs.get("attention_mask")
        last = last_token_positions(input_ids, mask, _pad_token_id(model))  # [examples]
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last.to(hidden.device)[origins]]
        logits = model.score(pooled)  # [rows, classes]
        return ModelOutputs(model, origins, hidden, logits.float(), input_ids, mask)


def readout_for(model: nn.Module) -> Readout:
    """The readout that classifies `model`'s rows exactly."""
    if is_last_token_classifier(model):
        return LastTokenReadout()
    return OwnHeadReadout()


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


def make_objective(name: str, target: str | int = "predicted", **options) -> Objective:
    """The registered objective `name`, configured with its target (and any options it takes)."""
    cls = OBJECTIVES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise InputError(f"unknown output {name!r}; choose one of: {', '.join(OBJECTIVES)}")
    return cls(target, **options)


def class_values(logits: Logits, target: int | torch.Tensor, output: str) -> RowValues:
    """F per row of class logits [rows, classes] for one class (or one per row), by objective name."""
    objective = make_objective(output, "predicted")
    if not isinstance(objective, ClassObjective):
        raise InputError(f"output {output!r} is not a class objective")
    targets = torch.as_tensor(target, device=logits.device).expand(logits.shape[0])
    return objective.from_logits(logits, targets)
