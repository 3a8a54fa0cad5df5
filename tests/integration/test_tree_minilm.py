"""Attribution trees on the shipped MiniLM (briefly fine-tuned): the command of the issue's "done
when", a sentence pair with the real tokenizer, a long input, and a small dataset analysis."""

from __future__ import annotations

import json

import numpy as np
import pytest

import attattr
from attattr.analyses.tree.build import AttributionTree
from tests.unit.test_tree import parse_dot, plain_tree

pytestmark = pytest.mark.integration

TEXT = "a gorgeous, witty and deeply moving film"


def test_tree_command_on_minilm(quick_rt_home, run_cli, monkeypatch, tmp_path):
    monkeypatch.setenv("ATTATTR_HOME", str(quick_rt_home))
    out = tmp_path / "tree"
    code, stdout, err = run_cli("tree", TEXT, "--out", out, "--steps", 8)
    assert code == 0, err
    assert stdout.startswith("prediction: ") and "[CLS] #0  (root)" in stdout
    tree = AttributionTree.from_json(json.loads((out / "tree.json").read_text()))
    attr = attattr.Attribution.load(out)
    assert tree.tokens == attr.tokens and tree.tokens[0] == "[CLS]" and tree.tokens[-1] == "[SEP]"
    assert tree.model_id == "minilm-rt" and len(tree.layers) == 6 and tree.label in ("negative", "positive")
    # the tree agrees with the plain reference implementation on these real scores
    top, parents, _ = plain_tree(attr.scores.double().numpy(), 0.4, "strongest")
    assert tree.top == top
    assert {e.child: (e.parent, e.layer) for e in tree.edges} == {c: p[:2] for c, p in parents.items()}
    nodes, edges, _ = parse_dot((out / "tree.dot").read_text())
    assert len(nodes) == tree.size and len(edges) == tree.size - 1
    assert (out / "tree.png").stat().st_size > 20_000 and "<svg" in (out / "tree.svg").read_text()


def test_pair_and_long_input_on_minilm(quick_rt_model, tmp_path):
    from attattr.render.plots.tree import draw_tree

    m = quick_rt_model
    attr = attattr.attribute(m.model, m.tokenizer, "the cat sat on the mat", "a cat is sitting", steps=4)
    tree = attr.tree(0.3)
    assert tree.tokens.count("[SEP]") == 2 and tree.segment_ids[-1] == 1 and tree.root == 0
    long_text = " ".join(["the film is long but its ending is moving and the cast is superb"] * 3)
    attr = attattr.attribute(m.model, m.tokenizer, long_text, steps=4)
    assert attr.num_tokens >= 40
    tree = attr.tree(0.4)
    draw_tree(tree, tmp_path / "long")
    assert (tmp_path / "long.png").stat().st_size > 20_000


def test_tree_stats_on_minilm(quick_rt_home, run_cli, monkeypatch, tmp_path):
    monkeypatch.setenv("ATTATTR_HOME", str(quick_rt_home))
    out = tmp_path / "stats"
    code, stdout, err = run_cli(
        "tree", "stats", "--model", "minilm-rt", "--data", "rotten-tomatoes", "--examples", 4,
        "--steps", 4, "--ks", "0,1,5,20", "--seeds", 2, "--out", out, "--json",
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["examples"] == 4 and len(summary["receptive_field"]) == 6
    curves = summary["faithfulness"]["methods"]
    assert set(curves) == {"attribution", "attention", "random", "attribution-nonroot", "attention-nonroot"}
    assert all(np.isfinite(c["mean_drop"]).all() for c in curves.values())
