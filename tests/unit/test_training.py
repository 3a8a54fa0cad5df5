"""Fine-tuning on tiny models: it learns, it is deterministic, batches and saving are safe."""

from __future__ import annotations

import json
import os

import pytest
import torch

from attattr import models, training
from attattr.core.errors import InputError
from attattr.data import Dataset, Example
from attattr.models import is_built, read_manifest
from attattr.training import evaluate, fine_tune, length_grouped_batches, training_subset

POS = ["good film", "very good", "a good cat", "good good dog", "it is good", "the good mat"]
NEG = ["bad film", "very bad", "a bad cat", "bad bad dog", "it is bad", "the bad mat"]


def _toy(n_repeat: int = 4) -> Dataset:
    examples = []
    for r in range(n_repeat):
        for t in POS:
            examples.append(Example(f"p{r}-{t}", t + " again" * r, None, 1))
        for t in NEG:
            examples.append(Example(f"n{r}-{t}", t + " again" * r, None, 0))
    return Dataset("toy", "train", examples, ["negative", "positive"])


@pytest.fixture
def fit(make_tiny_model, tiny_tok):
    def run(seed: int, steps: int = 40):
        model = make_tiny_model("bert", seed=0)
        result = fine_tune(
            model, tiny_tok, _toy(), max_length=32, steps=steps, lr=3e-3, batch_size=8, seed=seed
        )
        return model, result

    return run


def test_fine_tune_learns_a_separable_task(fit, tiny_tok):
    model, result = fit(seed=1, steps=60)
    assert result.steps == 60 and result.final_loss < 0.2  # from ln 2 = 0.69
    assert not model.training
    accuracy, predicted = evaluate(model, tiny_tok, _toy(), max_length=32)
    assert accuracy == 1.0
    assert predicted.tolist() == [ex.label for ex in _toy()]


def test_fine_tune_is_deterministic_given_the_seed(fit):
    a, _ = fit(seed=3, steps=10)
    b, _ = fit(seed=3, steps=10)
    c, _ = fit(seed=4, steps=10)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert any(
        not torch.equal(pa, pc)
        for pa, pc in zip(a.state_dict().values(), c.state_dict().values(), strict=True)
    )


def test_fine_tune_refuses_unlabelled_data(tiny_bert, tiny_tok):
    ds = Dataset("u", "train", [Example("0", "good", None, None)])
    with pytest.raises(InputError, match="unlabelled"):
        fine_tune(tiny_bert, tiny_tok, ds, max_length=8, steps=1, lr=1e-3, batch_size=2)


def test_evaluate_matches_one_by_one_predictions(make_tiny_model, tiny_tok):
    model = make_tiny_model("bert", seed=5, init=0.3)
    tok = tiny_tok
    ds = _toy(2)
    accuracy, predicted = evaluate(model, tok, ds, max_length=32, batch_size=5)
    expected = []
    with torch.no_grad():
        for ex in ds:
            enc = tok([ex.text], return_tensors="pt")
            expected.append(int(model(**enc).logits.argmax(-1)))
    assert predicted.tolist() == expected
    assert accuracy == pytest.approx(sum(p == ex.label for p, ex in zip(expected, ds, strict=True)) / len(ds))


def test_length_grouped_batches_cover_everything_once():
    lengths = [int(x) for x in torch.randint(3, 200, (1000,), generator=torch.Generator().manual_seed(0))]
    batches = length_grouped_batches(lengths, 16, torch.Generator().manual_seed(1))
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(1000))
    assert all(len(b) <= 16 for b in batches)
    # padding inside a batch is much smaller than with random batches
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 40
    again = length_grouped_batches(lengths, 16, torch.Generator().manual_seed(1))
    assert again == batches


def test_training_subset_is_fixed_by_the_seed():
    ds = Dataset("d", "train", [Example(str(i), f"t{i}", None, i % 2) for i in range(100)], None)
    a = training_subset(ds, 30, seed=1)
    assert len(a) == 30 and [e.id for e in a] == [e.id for e in training_subset(ds, 30, seed=1)]
    assert [e.id for e in a] != [e.id for e in training_subset(ds, 30, seed=2)]
    assert [int(e.id) for e in a] == sorted(int(e.id) for e in a)
    assert training_subset(ds, None, seed=1) is ds


def test_train_recipe_rejects_bad_step_counts():
    with pytest.raises(InputError, match="--max-steps must be >= 1"):
        training.train_recipe("minilm-rt", max_steps=0)
    with pytest.raises(InputError, match="--dev-limit must be >= 1"):
        training.train_recipe("minilm-rt", dev_limit=0)


# ---------------------------------------------------------------------------------------------
# Saving: never a half-written model that counts as built
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def save(tiny_bert, tiny_tok):
    def run(final, accuracy=0.5, force=True):
        manifest = {"recipe": final.name, "dev_accuracy": accuracy}
        models.save_built(
            tiny_bert, tiny_tok, manifest, final, force=force, started=0.0, seconds_key="total_seconds"
        )

    return run


def test_save_writes_weights_tokenizer_and_complete_manifest(attattr_home, save):
    final = attattr_home / "models" / "minilm-rt"
    save(final)
    assert is_built("minilm-rt")
    manifest = read_manifest(final)
    assert manifest["complete"] is True and manifest["dev_accuracy"] == 0.5
    assert (final / "config.json").is_file() and (final / "tokenizer.json").is_file()
    assert [p.name for p in final.parent.iterdir() if p.name.startswith(".tmp")] == []


def test_interrupted_save_leaves_nothing_built(attattr_home, monkeypatch, tiny_bert, tiny_tok):
    final = attattr_home / "models" / "minilm-rt"
    tok = tiny_tok

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(type(tok), "save_pretrained", interrupted)
    with pytest.raises(KeyboardInterrupt):
        models.save_built(
            tiny_bert,
            tok,
            {"recipe": "minilm-rt"},
            final,
            force=True,
            started=0.0,
            seconds_key="total_seconds",
        )
    assert not final.exists() and not is_built("minilm-rt")
    assert list(final.parent.iterdir()) == []


def test_interrupted_replacement_keeps_the_previous_model(attattr_home, monkeypatch, save):
    final = attattr_home / "models" / "minilm-rt"
    save(final, accuracy=0.7)
    real_rename = os.rename
    calls = []

    def rename(src, dst):
        calls.append((str(src), str(dst)))
        if len(calls) == 2:  # after moving the old model aside, before moving the new one in
            raise KeyboardInterrupt
        return real_rename(src, dst)

    monkeypatch.setattr(training.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        save(final, accuracy=0.9)
    monkeypatch.setattr(training.os, "rename", real_rename)
    assert is_built("minilm-rt") and read_manifest(final)["dev_accuracy"] == 0.7
    assert sorted(p.name for p in final.parent.iterdir()) == ["minilm-rt"]


def test_force_replaces_and_no_force_keeps(attattr_home, save):
    final = attattr_home / "models" / "minilm-rt"
    save(final, accuracy=0.6)
    save(final, accuracy=0.8, force=False)
    assert read_manifest(final)["dev_accuracy"] == 0.6
    save(final, accuracy=0.8, force=True)
    assert read_manifest(final)["dev_accuracy"] == 0.8
    assert sorted(p.name for p in final.parent.iterdir()) == ["minilm-rt"]


def test_stale_temporary_directories_are_removed(attattr_home, save):
    models_dir = attattr_home / "models"
    stale = models_dir / ".tmp-minilm-rt-999999999-1"  # no such process
    stale.mkdir(parents=True)
    (stale / "manifest.json").write_text(json.dumps({"complete": True}))
    save(models_dir / "minilm-rt")
    assert not stale.exists()


def _killed_between_renames(final):
    """The state a `train --force` killed between its two renames leaves: the previous model moved
    aside under a process id that no longer runs, nothing in its place."""
    aside = final.parent / f".old-{final.name}-999999999-12345"
    os.rename(final, aside)
    assert not is_built(final.name)
    return aside


def test_model_moved_aside_by_a_killed_replacement_is_restored_by_load(attattr_home, save):
    final = attattr_home / "models" / "minilm-rt"
    save(final, accuracy=0.7)
    aside = _killed_between_renames(final)
    loaded = models.load("minilm-rt", build=False, quiet=True)  # would refuse: "not built"
    assert loaded.model_id == "minilm-rt" and is_built("minilm-rt")
    assert read_manifest(final)["dev_accuracy"] == 0.7 and not aside.exists()
    assert sorted(p.name for p in final.parent.iterdir()) == ["minilm-rt"]


def test_model_moved_aside_by_a_killed_replacement_is_restored_by_a_later_run(attattr_home, save):
    final = attattr_home / "models" / "minilm-rt"
    save(final, accuracy=0.7)
    aside = _killed_between_renames(final)
    # force=False: the restored model counts as built, so nothing is trained
    manifest = training.train_recipe("minilm-rt", force=False, home=attattr_home)
    assert manifest["dev_accuracy"] == 0.7 and is_built("minilm-rt") and not aside.exists()


def test_leftovers_next_to_a_model_in_place_are_removed(attattr_home, save):
    final = attattr_home / "models" / "minilm-rt"
    save(final, accuracy=0.7)
    aside = _killed_between_renames(final)
    save(final, accuracy=0.9)  # a new model saved before anything restored the old one
    assert read_manifest(final)["dev_accuracy"] == 0.9 and not aside.exists()
    # killed after the second rename, before the old model was removed
    stale = final.parent / ".old-minilm-rt-999999999-7"
    stale.mkdir()
    (stale / "manifest.json").write_text(json.dumps({"complete": True}))
    assert training.recover_interrupted("minilm-rt") is None
    assert not stale.exists() and read_manifest(final)["dev_accuracy"] == 0.9


def test_recovery_leaves_a_running_replacement_and_other_recipes_alone(attattr_home, save):
    final = attattr_home / "models" / "minilm-rt"
    save(final, accuracy=0.7)
    running = final.parent / f".old-minilm-rt-{os.getppid()}-1"  # a live process between its renames
    os.rename(final, running)
    other = final.parent / ".old-minilm-rt-imdb-999999999-1"  # another recipe's name starts the same
    other.mkdir()
    assert training.recover_interrupted("minilm-rt") is None
    assert running.exists() and other.exists() and not final.exists()
    incomplete = final.parent / ".old-minilm-rt-999999999-2"  # no manifest: never put in place
    incomplete.mkdir()
    assert training.recover_interrupted("minilm-rt") is None
    assert not final.exists() and not incomplete.exists() and running.exists()


def test_training_threads(monkeypatch):
    monkeypatch.delenv("ATTATTR_THREADS", raising=False)
    assert training.training_threads() == training.cpu_cores() >= 1
    monkeypatch.setenv("ATTATTR_THREADS", "1")
    assert training.training_threads() == 1
    monkeypatch.setenv("ATTATTR_THREADS", "zero")
    with pytest.raises(InputError, match="ATTATTR_THREADS must be a positive integer, got 'zero'"):
        training.training_threads()
