"""Fine-tuning the default recipe for a few steps through the CLI (the session's quick_rt_home
fixture runs `attattr train minilm-rt --max-steps 30 --dev-limit 200`), then reloading it."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import transformers

from attattr import models
from attattr.core.encoding import predict
from attattr.data import load_dataset
from tests.conftest import QUICK_DEV, QUICK_STEPS

pytestmark = pytest.mark.integration


def test_manifest_records_what_was_trained(quick_rt_home):
    manifest = models.read_manifest(quick_rt_home / "models" / "minilm-rt")
    recipe = models.RECIPES["minilm-rt"]
    train = load_dataset("rotten-tomatoes", "train")
    assert manifest["complete"] is True and manifest["recipe"] == "minilm-rt"
    assert manifest["settings"] == recipe.to_dict()
    assert manifest["seed"] == recipe.seed == 42
    assert manifest["steps"] == QUICK_STEPS and manifest["max_steps"] == QUICK_STEPS
    assert manifest["planned_steps"] == math.ceil(len(train) / recipe.batch_size) * recipe.epochs
    assert manifest["train_examples"] == len(train) == 6530
    assert manifest["data_fingerprint"] == train.fingerprint()
    assert manifest["dev_examples"] == QUICK_DEV
    assert (
        manifest["dev_fingerprint"] == load_dataset("rotten-tomatoes", "dev", limit=QUICK_DEV).fingerprint()
    )
    assert manifest["label_names"] == ["negative", "positive"]
    assert manifest["versions"]["torch"] == torch.__version__
    assert manifest["versions"]["transformers"] == transformers.__version__
    assert manifest["versions"]["attattr"] == __import__("attattr").__version__
    assert manifest["training_seconds"] > 0 and 0 < manifest["final_loss"] < 5
    assert manifest["threads"] >= 1 and manifest["bf16"] in (True, False)


def test_reloaded_model_reproduces_the_recorded_dev_accuracy(quick_rt_model, quick_rt_home):
    loaded = quick_rt_model
    assert loaded.model_id == "minilm-rt" and loaded.recipe is models.RECIPES["minilm-rt"]
    assert loaded.label_names == ["negative", "positive"] and not loaded.model.training
    assert loaded.max_length == loaded.recipe.max_length
    # recompute through a different code path: our attention function, unsorted batches
    dev = load_dataset("rotten-tomatoes", "dev", limit=QUICK_DEV)
    probs = predict(loaded.model, loaded.tokenizer, dev.texts, batch_size=16, max_length=loaded.max_length)
    assert probs.shape == (QUICK_DEV, 2)
    accuracy = float((probs.argmax(-1) == torch.tensor(dev.labels)).float().mean())
    manifest = models.read_manifest(quick_rt_home / "models" / "minilm-rt")
    assert accuracy == pytest.approx(manifest["dev_accuracy"], abs=1.0 / QUICK_DEV)
    # 30 steps already move the classifier away from a constant answer
    assert 0 < float((probs.argmax(-1) == 1).float().mean()) < 1


def test_cli_lists_the_partial_model_and_does_not_retrain(quick_rt_home, run_cli, monkeypatch):
    monkeypatch.setenv("ATTATTR_HOME", str(quick_rt_home))
    code, out, _ = run_cli("models", "--json")
    rows = {r["name"]: r for r in json.loads(out)["recipes"]}
    assert code == 0 and rows["minilm-rt"]["built"] and rows["minilm-rt"]["partial"]
    assert rows["minilm-rt"]["steps"] == QUICK_STEPS
    started = time.perf_counter()
    code, out, _ = run_cli("train", "minilm-rt")
    assert code == 0 and "already built" in out and "--force" in " ".join(out.split())
    assert time.perf_counter() - started < 30


def test_ctrl_c_during_training_leaves_nothing_built(tmp_path):
    env = {**os.environ, "ATTATTR_HOME": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from attattr.cli import main; main()",
            "train",
            "minilm-rt",
            "--max-steps",
            "400",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        # the command announces the fine-tuning, then loads data and model and trains: Ctrl-C a bit later
        first = proc.stdout.readline()
        assert first.startswith("fine-tuning minilm-rt"), first
        time.sleep(15)
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=300)  # a loaded machine finishes the current step first
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert not models.is_built("minilm-rt", home=tmp_path)
    assert list((tmp_path / "models").glob("*")) == []
