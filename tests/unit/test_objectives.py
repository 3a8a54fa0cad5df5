"""Objectives: the registry, F per row by origin, last-token positions, and a new objective
registered from outside the package running through the engine."""

from __future__ import annotations

import pytest
import torch

import attattr
from attattr.core.errors import InputError, UnsupportedModelError
from attattr.core.objectives import (
    OBJECTIVES,
    ClassObjective,
    ModelOutputs,
    make_objective,
    register,
)
from attattr.core.objectives import last_token_positions as last

from ..tiny import tiny_model, tiny_tokenizer

LOGITS = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, 1.0]])  # [examples, classes]


def _outputs(origins: list[int]) -> ModelOutputs:
    """Rows forked from two examples: each row's logits are its origin example's plus the row index."""
    origins_t = torch.tensor(origins)
    logits = LOGITS[origins_t] + torch.arange(len(origins))[:, None]
    return ModelOutputs(model=None, origins=origins_t, hidden=None, logits=logits)


def test_registry_names_and_unknown_name():
    assert {"prob", "logit", "logprob"} <= set(OBJECTIVES)
    with pytest.raises(InputError, match="unknown output 'energy'; choose one of: prob, logit, logprob"):
        make_objective("energy")
    with pytest.raises(InputError, match="target must be 'predicted', 'gold' or a class index"):
        make_objective("prob", target="best")


@pytest.mark.parametrize(
    ("name", "transform"),
    [
        ("prob", lambda x: torch.softmax(x, -1)),
        ("logit", lambda x: x),
        ("logprob", lambda x: torch.log_softmax(x, -1)),
    ],
)
def test_values_follow_each_rows_origin(name, transform):
    outputs = _outputs([0, 1, 1, 0])
    objective = make_objective(name, target="predicted")
    targets = objective.resolve(outputs.rows(slice(0, 2)), [None, None])
    assert targets.tolist() == [0, 1]  # argmax of each example's own logits
    values = objective(outputs, targets)
    expected = [transform(outputs.logits[r])[[0, 1, 1, 0][r]] for r in range(4)]
    torch.testing.assert_close(values, torch.stack(expected))


def test_gold_and_index_targets():
    outputs = _outputs([0, 1])
    assert make_objective("logit", target="gold").resolve(outputs, [2, 0]).tolist() == [2, 0]
    assert make_objective("logit", target=1).resolve(outputs, [None, None]).tolist() == [1, 1]
    model = tiny_model("bert")
    with pytest.raises(InputError, match="target class 5 out of range: the model has 2 classes"):
        make_objective("prob", target=5).check(model)
    with pytest.raises(InputError, match=r"needs a label for every example; missing for \['b'\]"):
        make_objective("prob", target="gold").check_labels([1, None], ["a", "b"], model)
    with pytest.raises(InputError, match="gold label 3 out of range"):
        make_objective("prob", target="gold").check_labels([3], ["a"], model)


def test_outputs_without_class_logits_are_refused():
    outputs = ModelOutputs(model=torch.nn.Linear(2, 2), origins=torch.arange(2), hidden=None)
    with pytest.raises(UnsupportedModelError, match="Linear has no sequence-classification head"):
        make_objective("prob")(outputs, torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize(
    ("ids", "mask", "pad", "expected"),
    [
        ([[5, 6, 7, 0, 0], [5, 6, 7, 8, 9]], [[1, 1, 1, 0, 0], [1] * 5], 0, [2, 4]),  # right padding
        ([[0, 0, 5, 6, 7], [5, 6, 7, 8, 9]], [[0, 0, 1, 1, 1], [1] * 5], 0, [4, 4]),  # left padding
        ([[5, 6, 2, 2, 0]], [[1, 1, 1, 1, 0]], 2, [1]),  # the padding token ends the text (eos as pad)
        ([[5, 6, 7, 0]], [[1, 1, 1, 0]], None, [2]),  # no padding token: the attention mask decides
        ([[0, 2, 2]], [[0, 1, 1]], 2, [1]),  # only padding tokens: the first real one
    ],
)
def test_last_token_positions(ids, mask, pad, expected):
    assert last(torch.tensor(ids), torch.tensor(mask), pad).tolist() == expected


class _Margin(ClassObjective):
    """logit(target) - logit(class 0): a contrastive objective registered from outside."""

    name = "test-margin"

    def transform(self, logits):
        return logits - logits[:, :1]


def test_a_registered_objective_runs_through_the_engine():
    model, tok = tiny_model("bert", layers=2, init=0.2), tiny_tokenizer()
    register(_Margin)
    try:
        margin = attattr.attribute(
            model,
            tok,
            "the cat sat on a mat",
            output="test-margin",
            target=1,
            steps=24,
            rule="gauss-legendre",
        )
        logit = attattr.attribute(
            model, tok, "the cat sat on a mat", output="logit", target=1, steps=24, rule="gauss-legendre"
        )
        zero = attattr.attribute(
            model, tok, "the cat sat on a mat", output="logit", target=0, steps=24, rule="gauss-legendre"
        )
    finally:
        OBJECTIVES.pop("test-margin")
    assert margin.output == "test-margin" and margin.target == 1
    # linear in the logits: the margin's attribution is the difference of the two logits' attributions
    torch.testing.assert_close(margin.scores, logit.scores - zero.scores, atol=1e-5, rtol=0)
    assert margin.output_value == pytest.approx(logit.output_value - zero.output_value, abs=1e-5)
    assert margin.completeness_gaps().abs().max() < 1e-4
