"""The quick minilm-rt recipe as `attattr explain` sees it: how a loaded recipe describes itself,
and inputs cut at the recipe's length (the session's quick_rt_model fixture trains it once)."""

from __future__ import annotations

import pytest

import attattr

pytestmark = pytest.mark.integration


def test_loaded_recipe_describes_its_accuracy(quick_rt_model):
    line = quick_rt_model.describe()
    accuracy = 100 * quick_rt_model.manifest["dev_accuracy"]
    assert line.startswith("minilm-rt, dev accuracy ") and f"{accuracy:.1f} %" in line
    assert "rotten-tomatoes dev examples (a partial model: --max-steps)" in line


def test_recipe_inputs_are_cut_at_the_recipe_length(quick_rt_model):
    # minilm-rt was trained on 128 tokens; the encoder itself reads 512
    assert quick_rt_model.max_length == 128 and quick_rt_model.tokenizer.model_max_length == 128
    long_text = " ".join(["a slow but rewarding film"] * 60)
    attr = attattr.attribute(
        quick_rt_model.model, quick_rt_model.tokenizer, long_text, rule="gauss-legendre", steps=1
    )
    assert len(attr.tokens) == 128 and attr.truncated
