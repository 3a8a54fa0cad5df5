"""`attattr tree` and `attattr tree stats` end to end on tiny classifiers saved as model directories."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from attattr.analyses.tree.build import AttributionTree
from attattr.core.result import Attribution
from tests.tiny import tiny_model, tiny_tokenizer

TEXTS = ["the cat sat on the mat", "a dog ran down the mat again", "the film is very good", "not a good film"]


def _cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    from attattr.cli import main

    monkeypatch.setattr(sys, "argv", ["attattr", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        main()
    out, err = capsys.readouterr()
    return exc.value.code or 0, out, " ".join(err.split())  # the error console wraps long lines


def _save_model(path, seed):
    torch.manual_seed(seed)
    model = tiny_model("bert", layers=3, heads=4, seed=seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
    model.config.id2label = {0: "negative", 1: "positive"}
    model.config.label2id = {"negative": 0, "positive": 1}
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("models")
    return _save_model(root / "a", 0), _save_model(root / "b", 1)


def test_tree_command_prints_and_writes_files(models, tmp_path, monkeypatch, capsys):
    model_a, _ = models
    out = tmp_path / "out"
    code, stdout, err = _cli(
        monkeypatch, capsys, "tree", "the film is very good", "--model", model_a, "--steps", 3,
        "--threshold", 0.3, "--out", out,
    )  # fmt: skip
    assert code == 0, err
    assert stdout.splitlines()[0].startswith("prediction: ")
    assert "[CLS] #0  (root)" in stdout and "(top node" in stdout
    for name in (
        "tree.png",
        "tree.svg",
        "tree.json",
        "tree.dot",
        "attributions.safetensors",
        "meta.json",
        "report.html",
    ):
        assert (out / name).stat().st_size > 0, name
    tree = AttributionTree.from_json(json.loads((out / "tree.json").read_text()))
    attr = Attribution.load(out)
    assert tree == attr.tree(0.3)  # the saved attribution gives back the saved tree
    assert tree.threshold == 0.3 and tree.text == "the film is very good"
    assert (out / "tree.dot").read_text().startswith("digraph attribution_tree {")

    # --json prints the tree; --from rebuilds it from the saved attribution without a model
    code, stdout, _ = _cli(monkeypatch, capsys, "tree", "--from", out, "--threshold", 0.3, "--json")
    assert code == 0 and AttributionTree.from_json(json.loads(stdout)) == tree
    code, stdout, _ = _cli(monkeypatch, capsys, "tree", "--from", out, "--threshold", 1.0, "--json")
    data = json.loads(stdout)
    assert code == 0 and data["size"] == 2 and "threshold 1" in data["message"]


def test_tree_command_with_a_pair(models, tmp_path, monkeypatch, capsys):
    model_a, _ = models
    code, stdout, err = _cli(
        monkeypatch, capsys, "tree", "the cat sat", "--pair", "a dog ran", "--model", model_a, "--steps", 2,
        "--threshold", 0.2, "--json",
    )  # fmt: skip
    assert code == 0, err
    data = json.loads(stdout)
    assert data["tokens"].count("[SEP]") == 2 and data["text_pair"] == "a dog ran"
    assert data["segment_ids"][-1] == 1 and data["segment_ids"][1] == 0


def test_tree_command_bad_input_gives_one_line_and_exit_2(models, tmp_path, monkeypatch, capsys):
    model_a, model_b = models
    for args, message in (
        (["", "--model", model_a], "text is empty"),
        (["some text", "--threshold", 0, "--model", model_a], "threshold must be in (0, 1]"),
        (["some text", "--threshold", 1.5, "--model", model_a], "threshold must be in (0, 1]"),
        (["some text", "--parent-choice", "x", "--model", model_a], "--parent-choice"),
        (["--from", tmp_path / "missing"], "attribution file not found"),
    ):
        code, _, err = _cli(monkeypatch, capsys, "tree", *args)
        assert code == 2, args
        assert err.startswith("error: ") and message in err, err
        assert "Traceback" not in err
    # an attribution file made with another model than the one given
    out = tmp_path / "a"
    assert (
        _cli(monkeypatch, capsys, "tree", "the cat", "--model", model_a, "--steps", 2, "--out", out)[0] == 0
    )
    code, _, err = _cli(monkeypatch, capsys, "tree", "--from", out, "--model", model_b)
    assert code == 2 and "was computed with model" in err and err.count("error:") == 1


def test_tree_stats_command(models, tmp_path, monkeypatch, capsys):
    model_a, _ = models
    csv = tmp_path / "data.csv"
    csv.write_text("text,label\n" + "".join(f'"{t}",{i % 2}\n' for i, t in enumerate(TEXTS)))
    out = tmp_path / "stats"
    args = [
        "tree",
        "stats",
        "--model",
        model_a,
        "--data",
        csv,
        "--split",
        "dev",
        "--examples",
        3,
        "--out",
        out,
    ]
    args += ["--steps", 2, "--ks", "0,1,3", "--seeds", 2, "--threshold", 0.3]
    code, stdout, err = _cli(monkeypatch, capsys, *args, "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["examples"] >= 1 and summary["faithfulness"]["k"] == [0, 1, 3]
    for name in (
        "tree_stats.json",
        "faithfulness.png",
        "receptive_field.svg",
        "tree_size_depth.png",
        "report.html",
    ):
        assert (out / name).stat().st_size > 0, name
    assert len(list((out / "runs").glob("tree-stats-*.jsonl"))) == 1
    # a second run resumes (same numbers) and prints a text summary
    code, stdout, _ = _cli(monkeypatch, capsys, *args)
    assert code == 0 and "receptive field" in stdout and "edge faithfulness" in stdout
    assert json.loads((out / "tree_stats.json").read_text())["sizes"] == summary["sizes"]
    code, _, err = _cli(monkeypatch, capsys, "tree", "stats", "--model", model_a, "--out", out, "--ks", "a,b")
    assert code == 2 and "--ks" in err


def test_tree_stats_rejected_commands_write_nothing_and_settings_coexist(
    models, tmp_path, monkeypatch, capsys
):
    model_a, _ = models
    csv = tmp_path / "data.csv"
    csv.write_text("text,label\n" + "".join(f'"{t}",{i % 2}\n' for i, t in enumerate(TEXTS)))
    out = tmp_path / "stats"
    options = ["tree", "stats", "--model", model_a, "--data", csv, "--examples", 2]
    options += ["--steps", 2, "--ks", "0,1", "--seeds", 1, "--no-faithfulness"]
    base = [*options, "--out", out]
    for extra, message in (
        (["--steps", 0], "steps must be an integer >= 1"),
        (["--rule", "bogus"], "unknown integration rule 'bogus'"),
        (["--threshold", 0], "threshold"),
        (["--methods", "saliency"], "unknown connection ranking"),
        (["--parent-choice", "x"], "parent_choice"),
        (["--batch-size", 0], "batch size"),
    ):
        code, _, err = _cli(monkeypatch, capsys, *base, *extra)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (extra, err)
        assert not out.exists(), extra
    assert _cli(monkeypatch, capsys, *base)[0] == 0
    assert _cli(monkeypatch, capsys, *base, "--threshold", 0.5, "--label-column", "label")[0] == 0
    assert len(list((out / "runs").glob("tree-stats-*.jsonl"))) == 2
    assert _cli(monkeypatch, capsys, *base, "--fresh")[0] == 0
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    code, _, err = _cli(monkeypatch, capsys, *options, "--out", blocker)
    assert code == 2 and "is a file" in err
