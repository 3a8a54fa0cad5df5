"""The dataset commands and their API functions integrate like `attribute` and `explain`: by default
in the error-controlled mode (tol and nodes per layer recorded), with the paper's rule and the
authors' released code as presets (`--paper`, `--preset`); explicit `--rule riemann-right --steps
20`, the default before, keeps the run files of earlier runs, so that they resume."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from attattr.analyses import heads
from attattr.analyses.tree.stats import run_tree_stats
from attattr.analyses.triggers import mine_patterns
from attattr.core.engine import attribute, resolve_integration
from attattr.core.errors import InputError
from attattr.core.quadrature import (
    DEFAULT_TOL,
    integration_record,
    integration_settings,
    summarise_integration,
)
from attattr.data import Dataset, Example
from tests.tiny import tiny_model, tiny_tokenizer

TEXTS = ["the cat sat on the mat", "a dog ran", "good film very good", "not a bad film"]
LONG = " and the film was very good and the cat"  # mined inputs must reach min_tokens
PAPER = {"steps": 20, "rule": "riemann-right"}

# Run files of explicit paper settings, written by the code before the default changed (the same
# calls as `_paper_runs`): a change that renames them makes earlier runs start over.
OLD_RUN_FILES = [
    "eff/effectiveness-82b090c9a8ea.jsonl",
    "imp/importance-attattr-9be6b9fcf892.jsonl",
    "mine/triggers-mine-3dcbf58abe64.jsonl",
    "prune/importance-attattr-6cc89ed16028.jsonl",
    "prune/prune-eval-42378d9bfd9d.jsonl",
    "tree/tree-stats-179b4c30b6d9.jsonl",
]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _paper_runs(folder: Path, **integration) -> list[str]:
    """Every dataset analysis on a tiny model with `integration`; the run files it wrote."""
    model, tok = tiny_model("bert", layers=2, heads=2, seed=0), tiny_tokenizer()
    exs = [Example(f"e{i}", t, None, i % 2) for i, t in enumerate(TEXTS)]
    ctx = {"model_id": "tiny", "data": "d", "split": "dev", "sample": "first"}
    heads.head_importance(
        model,
        tok,
        exs,
        "attattr",
        batch_size=2,
        runs_dir=folder / "imp",
        settings={"kind": "importance", "method": "attattr", **ctx},
        **integration,
    )
    heads.effectiveness(
        model, tok, exs, step=2, batch_size=2, runs_dir=folder / "eff", settings=ctx, **integration
    )
    heads.prune_experiment(
        model,
        tok,
        exs,
        exs,
        ["attattr"],
        seeds=1,
        batch_size=2,
        runs_dir=folder / "prune",
        context={"model_id": "tiny", "data": "d"},
        importance_context={"split": "train", "sample": "first"},
        eval_context={"split": "dev"},
        **integration,
    )
    run_tree_stats(
        model,
        tok,
        exs,
        threshold=0.4,
        ks=(0, 1),
        seeds=1,
        runs_dir=folder / "tree",
        settings={"model": "tiny", "data": "d", "split": "dev"},
        batch_size=2,
        model_id="tiny",
        label_names=None,
        **integration,
    )
    rows = [Example(f"m{i}", t + LONG, None, i % 2) for i, t in enumerate(TEXTS)]
    mine_patterns(
        model,
        tok,
        Dataset("d", "train", rows, ["negative", "positive"]),
        examples=3,
        min_tokens=5,
        order="first",
        batch_size=2,
        runs_dir=folder / "mine",
        model_id="tiny",
        label_names=["negative", "positive"],
        **integration,
    )
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.jsonl"))


# ---- the API ------------------------------------------------------------------------------------
def test_explicit_paper_settings_keep_the_run_files_of_the_old_default(tmp_path):
    assert _paper_runs(tmp_path / "explicit", **PAPER) == OLD_RUN_FILES
    # the preset is the same integration: the same files, record for record
    assert _paper_runs(tmp_path / "preset", preset="paper") == OLD_RUN_FILES
    for name in OLD_RUN_FILES:
        assert (tmp_path / "explicit" / name).read_text() == (tmp_path / "preset" / name).read_text()


def test_api_defaults_to_the_error_controlled_mode(tmp_path):
    model, tok = tiny_model("bert", layers=2, heads=2, seed=0), tiny_tokenizer()
    exs = [Example(f"e{i}", t, None, i % 2) for i, t in enumerate(TEXTS[:3])]
    imp = heads.head_importance(model, tok, exs, "attattr", batch_size=2)
    assert imp.settings["steps"] == "auto" and imp.settings["tol"] == DEFAULT_TOL
    nodes = imp.settings["integration"]
    assert nodes["examples"] == 3 and nodes["layers"] == [0, 1] and nodes["unconverged"] == []
    # the same numbers as the engine's own default, example by example (gold label)
    used = []  # nodes per layer, example by example
    for ex, table in zip(exs, imp.per_example, strict=True):
        attr = attribute(model, tok, ex.text, target="gold", label=ex.label)
        assert attr.tol == DEFAULT_TOL
        assert torch.allclose(table, attr.head_importance().double(), rtol=1e-6, atol=1e-12)
        used.append([r["nodes"] for r in attr.integration])
    assert nodes["mean_nodes"] == [sum(col) / len(col) for col in zip(*used, strict=True)]
    assert nodes["max_nodes"] == [max(col) for col in zip(*used, strict=True)]

    summary = run_tree_stats(model, tok, exs, ks=(0, 1), seeds=1, faithfulness=False, batch_size=2)
    assert summary["settings"]["steps"] == "auto" and summary["settings"]["tol"] == DEFAULT_TOL
    assert summary["integration"]["examples"] == 3

    rows = [Example(f"m{i}", t + LONG, None, i % 2) for i, t in enumerate(TEXTS)]
    mined = mine_patterns(
        model, tok, Dataset("d", "train", rows, ["negative", "positive"]), examples=2, min_tokens=5
    )
    assert mined.settings["steps"] == "auto" and mined.settings["tol"] == DEFAULT_TOL
    assert mined.integration["examples"] == 2


def test_api_presets_per_analysis_and_bad_combinations(tmp_path):
    """The authors' code integrates the pruning importance with 20 left-Riemann steps, single
    examples and triggers with 64; a preset does not take a contradicting rule, steps or tol."""
    model, tok = tiny_model("bert", layers=2, heads=2, seed=0), tiny_tokenizer()
    exs = [Example(f"e{i}", t, None, i % 2) for i, t in enumerate(TEXTS[:2])]
    imp = heads.head_importance(model, tok, exs, "attattr", preset="authors", batch_size=2)
    same = heads.head_importance(model, tok, exs, "attattr", steps=20, rule="riemann-left", batch_size=2)
    assert (imp.settings["steps"], imp.settings["rule"]) == (20, "riemann-left")
    assert torch.equal(imp.per_example, same.per_example)
    summary = run_tree_stats(model, tok, exs, ks=(0,), seeds=1, faithfulness=False, preset="authors")
    assert (summary["settings"]["steps"], summary["settings"]["rule"]) == (64, "riemann-left")
    assert "integration" not in summary  # a fixed rule: its nodes are its steps
    for bad, message in (
        ({"preset": "paper", "rule": "riemann-left"}, "preset 'paper' fixes rule='riemann-right'"),
        ({"preset": "authors", "steps": 64}, "preset 'authors' fixes steps=20"),
        ({"preset": "paper", "tol": 0.01}, "tol applies to steps='auto' only"),
        ({"preset": "papers"}, "unknown preset 'papers'"),
        ({"steps": 20, "tol": 0.01}, "tol applies to steps='auto'"),
        ({"steps": "auto", "rule": "riemann-right"}, "it takes no rule 'riemann-right'"),
        ({"tol": 1.5}, "tol must be a number between 0 and 1"),
    ):
        with pytest.raises(InputError, match=message):
            heads.head_importance(model, tok, exs, "attattr", **bad)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"steps": "auto"},
        {"steps": "auto", "rule": "gauss-legendre", "tol": 0.05},
        {"tol": 0.001},
        {"steps": 7},
        {"rule": "trapezoid"},
        {"rule": "gauss-legendre", "steps": 3},
        {"steps": 20, "rule": "riemann-right"},
        {"fast": True},
        {"dtype": "bfloat16", "steps": 4},
    ],
)
def test_recorded_settings_mean_what_the_raw_options_mean_to_the_engine(options):
    """The one recorded form (`integration_settings`) integrates exactly as the options given
    directly to the engine do, so that every command reads a rule or steps given alone alike."""
    recorded = integration_settings(**options)
    assert integration_settings(**recorded) == recorded  # resolving twice changes nothing
    direct, _, _ = resolve_integration(**options)
    again, _, _ = resolve_integration(**recorded)
    assert (again.adaptive, again.rule, again.steps, again.tol, again.dtype) == (
        direct.adaptive,
        direct.rule,
        direct.steps,
        direct.tol,
        direct.dtype,
    )
    if not direct.adaptive:
        assert torch.equal(torch.as_tensor(again.alphas), torch.as_tensor(direct.alphas))
        assert torch.equal(torch.as_tensor(again.weights), torch.as_tensor(direct.weights))


@dataclass
class _Attr:
    tol: float | None
    integration: list[dict] | None


def test_integration_records_and_their_summary():
    def layer(k, nodes, converged):
        return {"layer": k, "nodes": nodes, "subintervals": 1, "error_estimate": 0.1, "converged": converged}

    assert integration_record(_Attr(None, [layer(0, 20, None)])) is None  # a fixed rule
    a = integration_record(_Attr(0.01, [layer(0, 3, True), layer(1, 7, True)]))
    b = integration_record(_Attr(0.01, [layer(0, 21, False), layer(1, 3, True)]))
    assert b == {"layers": [0, 1], "nodes": [21, 3], "unconverged": [0]}
    summary = summarise_integration([{"id": "x", "integration": a}, {"id": "y", "integration": b}], 0.01)
    assert summary == {
        "tol": 0.01,
        "examples": 2,
        "layers": [0, 1],
        "mean_nodes": [12.0, 5.0],
        "max_nodes": [21, 7],
        "unconverged": [{"id": "y", "layers": [0]}],
    }
    assert summarise_integration([{"id": "x"}], None) is None  # records of an older run


# ---- the command line ----------------------------------------------------------------------------
@pytest.fixture
def tiny_files(tmp_path, save_tiny_model):
    model = save_tiny_model(tmp_path / "model", layers=2, heads=2)
    csv = tmp_path / "data.csv"
    csv.write_text("text,label\n" + "".join(f'"{t}{LONG}",{i % 2}\n' for i, t in enumerate(TEXTS)))
    return model, csv


def _commands(model: Path, csv: Path, out: Path) -> dict[str, list]:
    data = ["--model", model, "--data", csv, "--examples", 2, "--batch-size", 2]
    return {
        "heads importance": ["heads", "importance", *data, "--first", "--out", out / "imp", "--json"],
        "tree stats": [
            "tree", "stats", *data, "--split", "train", "--ks", "0,1", "--seeds", 1, "--out", out / "tree",
            "--json",
        ],
        "triggers mine": [
            "triggers", "mine", "--model", model, "--data", csv, "--split", "train", "--examples", 2,
            "--order", "first", "--min-tokens", 5, "--out", out / "mine" / "p.jsonl", "--json",
        ],
    }  # fmt: skip


def test_cli_default_is_error_controlled_and_records_tol_and_nodes(tiny_files, tmp_path, run_cli):
    model, csv = tiny_files
    commands = _commands(model, csv, tmp_path)
    for name, args in commands.items():
        code, _, err = run_cli(*args)
        assert code == 0, (name, err)
    imp = json.loads((tmp_path / "imp" / "importance-attattr.json").read_text())["settings"]
    stats = json.loads((tmp_path / "tree" / "tree_stats.json").read_text())
    header = json.loads((tmp_path / "mine" / "p.jsonl").read_text().splitlines()[0])
    for settings, nodes in (
        (imp, imp["integration"]),
        (stats["settings"], stats["integration"]),
        (header["settings"], header["integration"]),
    ):
        assert settings["steps"] == "auto" and settings["tol"] == DEFAULT_TOL
        assert nodes["tol"] == DEFAULT_TOL and nodes["layers"] == [0, 1] and nodes["examples"] == 2
        assert all(n >= 3 for n in nodes["max_nodes"])
    # --tol reaches the engine and the run's name
    code, _, err = run_cli(*commands["heads importance"], "--tol", "0.05")
    assert code == 0, err
    runs = [
        json.loads(p.read_text().splitlines()[0])["settings"]
        for p in (tmp_path / "imp" / "runs").glob("*.jsonl")
    ]
    assert sorted(r["tol"] for r in runs) == [0.01, 0.05]


def test_cli_paper_equals_explicit_paper_flags_bit_for_bit(tiny_files, tmp_path, run_cli):
    model, csv = tiny_files
    outputs = {}
    for label, flags in (("explicit", ["--rule", "riemann-right", "--steps", "20"]), ("paper", ["--paper"])):
        out = tmp_path / label
        for name, args in _commands(model, csv, out).items():
            code, _, err = run_cli(*args, *flags)
            assert code == 0, (name, err)
        code, tree, err = run_cli("tree", TEXTS[0], "--model", model, "--json", *flags)
        assert code == 0, err
        outputs[label] = (out, json.loads(tree))
    (explicit, tree_a), (paper, tree_b) = outputs["explicit"], outputs["paper"]
    assert tree_a == tree_b
    runs = sorted(p.relative_to(explicit) for p in explicit.rglob("runs/*.jsonl"))
    assert runs == sorted(p.relative_to(paper) for p in paper.rglob("runs/*.jsonl")) and len(runs) == 3
    for run in runs:  # the same run file names and the same records, byte for byte
        assert (explicit / run).read_text() == (paper / run).read_text()
    a = heads.Importance.load(explicit / "imp" / "importance-attattr.json")
    b = heads.Importance.load(paper / "imp" / "importance-attattr.json")
    assert torch.equal(a.per_example, b.per_example)
    assert (a.settings["steps"], a.settings["rule"], a.settings["dtype"]) == (20, "riemann-right", "float32")
    assert "tol" not in a.settings and "integration" not in a.settings
    stats = json.loads((paper / "tree" / "tree_stats.json").read_text())
    assert stats == json.loads((explicit / "tree" / "tree_stats.json").read_text())
    mined = [(d / "mine" / "p.jsonl").read_text() for d in (explicit, paper)]
    assert mined[0] == mined[1]


def test_cli_authors_preset_per_command(tiny_files, tmp_path, run_cli):
    model, csv = tiny_files
    commands = _commands(model, csv, tmp_path)
    for args in commands.values():
        code, _, err = run_cli(*args, "--preset", "authors")
        assert code == 0, err
    imp = json.loads((tmp_path / "imp" / "importance-attattr.json").read_text())["settings"]
    stats = json.loads((tmp_path / "tree" / "tree_stats.json").read_text())["settings"]
    mined = json.loads((tmp_path / "mine" / "p.jsonl").read_text().splitlines()[0])["settings"]
    assert (imp["rule"], imp["steps"]) == ("riemann-left", 20)  # the pruning importance
    assert (stats["rule"], stats["steps"]) == ("riemann-left", 64)
    assert (mined["rule"], mined["steps"]) == ("riemann-left", 64)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--paper", "--rule", "riemann-left"], "preset 'paper' fixes rule='riemann-right'"),
        (["--paper", "--steps", "64"], "preset 'paper' fixes steps=20"),
        (["--paper", "--preset", "authors"], "--paper and --preset authors contradict each other"),
        (["--preset", "nobody"], "unknown preset 'nobody'"),
        (["--paper", "--tol", "0.01"], "tol applies to steps='auto' only"),
        (["--steps", "20", "--tol", "0.01"], "tol applies to steps='auto'"),
        (["--steps", "auto", "--rule", "trapezoid"], "it takes no rule 'trapezoid'"),
        (["--steps", "many"], "--steps must be an integer >= 1 or 'auto'"),
    ],
)
def test_cli_integration_conflicts_are_one_line_and_write_nothing(tmp_path, run_cli, flags, message):
    """Refused before the model is looked for (it does not exist) and before any file is written."""
    nowhere = tmp_path / "no-model"
    csv = tmp_path / "data.csv"
    csv.write_text("text,label\nthe cat,0\n")
    commands = _commands(nowhere, csv, tmp_path / "out")
    commands["tree"] = ["tree", TEXTS[0], "--model", nowhere, "--out", tmp_path / "out" / "t"]
    commands["heads prune"] = ["heads", "prune", "--model", nowhere, "--out", tmp_path / "out" / "p"]
    for name, args in commands.items():
        code, _, err = run_cli(*args, *flags)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and message in lines[0], (name, err)
    assert not (tmp_path / "out").exists()


def test_cli_fast_with_a_preset_is_refused(tmp_path, run_cli):
    code, _, err = run_cli("heads", "importance", "--model", tmp_path / "none", "--fast", "--paper")
    assert code == 2 and "preset 'paper' and fast contradict each other" in err and err.count("\n") == 1
