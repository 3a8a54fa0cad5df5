"""`attattr explain` end to end on a tiny classifier saved as a model directory, and its errors."""

from __future__ import annotations

import json

import pytest
import torch

import attattr
from attattr import models
from attattr.core.result import Attribution

TEXT = "the film is very good"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tests.tiny import tiny_model, tiny_tokenizer

    path = tmp_path_factory.mktemp("explain") / "tiny"
    model = tiny_model("bert", layers=2, heads=2, seed=3)
    model.config.id2label = {0: "negative", 1: "positive"}
    model.config.label2id = {"negative": 0, "positive": 1}
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def test_explain_prints_the_summary_and_writes_what_it_computed(model_dir, tmp_path, run_cli):
    out = tmp_path / "out"
    code, stdout, err = run_cli("explain", TEXT, "--model", model_dir, "--steps", 4, "--out", out)
    assert code == 0, err
    lines = stdout.splitlines()
    assert lines[0] == f"model: {model_dir}"  # a directory has no recorded accuracy
    assert lines[1].startswith("prediction: ")
    assert "riemann-right, 4 steps, float32" in " ".join(stdout.split())  # rich wraps long lines
    for title in ("top heads", "top connections", "completeness"):
        assert title in stdout
    for name in ("attributions.safetensors", "meta.json", "heads.png", "heads.svg", "report.html"):
        assert (out / name).stat().st_size > 0, name
    assert len(list(out.glob("head_L*_H*.png"))) == 3

    # the saved tensors are the API's numbers for the same input and settings
    loaded = models.load(model_dir)
    expected = attattr.attribute(loaded.model, loaded.tokenizer, TEXT, steps=4)
    saved = Attribution.load(out)
    assert torch.allclose(saved.scores, expected.scores, atol=1e-7)
    assert saved.tokens == expected.tokens and saved.steps == 4


def test_explain_json_names_the_target_class(model_dir, run_cli):
    code, stdout, err = run_cli(
        "explain", TEXT, "--model", model_dir, "--target", "negative", "--rule", "gauss-legendre", "--steps", 3,
        "--json",
    )  # fmt: skip
    assert code == 0, err
    data = json.loads(stdout)
    assert data["target"] == 0 and data["rule"] == "gauss-legendre" and data["steps"] == 3
    assert data["seconds"] > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["   "], "text is empty"),
        ([TEXT, "--target", "neutral"], "unknown target 'neutral'"),
        ([TEXT, "--steps", "many"], "steps must be an integer"),
        ([TEXT, "--rule", "simpson"], "unknown integration rule 'simpson'"),
        ([TEXT, "--target", "gold"], "needs a label"),
        ([TEXT, "--output", "odds"], "unknown output 'odds'"),
    ],
)
def test_explain_bad_input_is_one_line_and_exit_code_2(model_dir, run_cli, args, message):
    code, stdout, err = run_cli("explain", *args, "--model", model_dir)
    assert code == 2
    assert message in " ".join(err.split())
    assert "Traceback" not in err


def test_explain_with_a_missing_model_directory(tmp_path, run_cli):
    code, _, err = run_cli("explain", TEXT, "--model", tmp_path / "nowhere")
    assert code == 2 and "cannot load" in err and "Traceback" not in err
