"""Fine-tuning a recipe classifier from its base encoder (bases.py), and measuring accuracy.

Determinism: python, numpy and torch are seeded from the recipe seed, the training subset and
the batch order come from seeded generators, and the number of threads is fixed by the machine,
so a rerun on the same machine gives the same model.

Safety: the model is written to a temporary directory next to its final place, the manifest
last, and the directory is renamed into place in one step; an interrupted run (Ctrl-C, a kill)
leaves at most a `.tmp-*` directory that never counts as built and is removed by the next run.
Replacing a built model (`--force`) moves the old one aside to `.old-*` first; a kill between
the two renames leaves the recipe without its directory, and the next run or load puts the old
model back (`models.save_built` and `models.recover_interrupted`, shared with the GGUF conversion).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .core.errors import InputError
from .data import Dataset, load_dataset
from .models import (
    Recipe,
    attattr_home,
    get_recipe,
    is_built,
    quiet_transformers,
    read_manifest,
    recipe_dir,
    recover_interrupted,
    save_built,
)
from .version import __version__

MANIFEST_FORMAT = "attattr-model/1"
GROUP_WINDOW = 32  # batches of similar length are formed inside windows of this many batches


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def training_threads() -> int:
    """Torch threads for training: $ATTATTR_THREADS if set (1 is faster on a crowded machine), else
    the number of CPU cores this process may use."""
    value = os.environ.get("ATTATTR_THREADS", "").strip()
    if value:
        try:
            n = int(value)
        except ValueError:
            raise InputError(f"ATTATTR_THREADS must be a positive integer, got {value!r}") from None
        if n < 1:
            raise InputError(f"ATTATTR_THREADS must be a positive integer, got {value!r}")
        return n
    return cpu_cores()


def bf16_supported() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX). Elsewhere bf16 autocast is
    emulated and much slower than float32 (measured 14x slower on an AVX2-only CPU)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def training_subset(dataset: Dataset, size: int | None, seed: int) -> Dataset:
    """A fixed subset of `size` examples (chosen by hashing each id with the seed), in source order."""
    if size is None or size >= len(dataset):
        return dataset
    keyed = sorted(
        range(len(dataset)), key=lambda i: hashlib.sha256(f"{seed}:{dataset[i].id}".encode()).digest()
    )
    keep = sorted(keyed[:size])
    return Dataset(
        dataset.name, dataset.split, [dataset[i] for i in keep], dataset.label_names, dataset.source
    )


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, generator: torch.Generator
) -> list[list[int]]:
    """Shuffle, sort by length inside windows of GROUP_WINDOW batches, cut into batches, shuffle the
    batches: batches hold inputs of similar length (little padding) and still come in random order."""
    order = torch.randperm(len(lengths), generator=generator).tolist()
    window = batch_size * GROUP_WINDOW
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: -lengths[i])
        batches.extend(chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size))
    perm = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in perm]


def _collate(features: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(f["input_ids"]) for f in features)
    out: dict[str, torch.Tensor] = {}
    for key in features[0]:
        fill = pad_id if key == "input_ids" else 0
        out[key] = torch.tensor([f[key] + [fill] * (width - len(f[key])) for f in features])
    return out


def _encode(tokenizer, dataset: Dataset, max_length: int) -> list[dict[str, list[int]]]:
    pairs = dataset.pairs if dataset.has_pairs else None
    enc = tokenizer(
        dataset.texts, pairs, truncation="longest_first" if pairs else True, max_length=max_length
    )
    keys = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in enc]
    return [{k: enc[k][i] for k in keys} for i in range(len(dataset))]


@torch.no_grad()
def evaluate(
    model,
    tokenizer,
    dataset: Dataset,
    *,
    max_length: int,
    batch_size: int = 64,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[float, torch.Tensor]:
    """Accuracy on the labelled examples and the predicted label indices `[examples]`.
    Inputs run sorted by length (little padding); predictions come back in dataset order."""
    was_training = model.training
    model.eval()
    features = _encode(tokenizer, dataset, max_length)
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    predicted = torch.empty(len(features), dtype=torch.long)
    pad_id = tokenizer.pad_token_id or 0
    accepted = set(inspect.signature(model.forward).parameters)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = {k: v for k, v in _collate([features[i] for i in idx], pad_id).items() if k in accepted}
        logits = model(**batch).logits
        predicted[idx] = logits.argmax(-1)
        if on_batch is not None:
            on_batch(len(idx))
    model.train(was_training)
    labelled = [i for i, ex in enumerate(dataset) if ex.label is not None]
    if not labelled:
        return float("nan"), predicted
    gold = torch.tensor([dataset[i].label for i in labelled])
    accuracy = int((predicted[labelled] == gold).sum()) / len(labelled)
    return accuracy, predicted


class _Progress:
    """A rich progress bar with ETA and the running loss on stderr (or nothing)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._progress = None

    def __enter__(self):
        if self.enabled:
            from rich.console import Console

            from .core.progress import progress_display

            self._progress = progress_display(Console(stderr=True), info=True)
            self._progress.__enter__()
        return self

    def task(self, description: str, total: int) -> Callable[..., None]:
        if self._progress is None:
            return lambda n=1, info=None: None
        prog = self._progress
        task = prog.add_task(description, total=total, info="")

        def advance(n: int = 1, info: str | None = None) -> None:
            if info is None:
                prog.advance(task, n)
            else:
                prog.update(task, advance=n, info=info)

        return advance

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.__exit__(*exc)


@dataclass
class FitResult:
    steps: int
    final_loss: float | None  # exponential moving average of the training loss
    seconds: float  # wall-clock time of the training loop
    cpu_seconds: float  # process CPU time of the loop (all threads)


def fine_tune(
    model,
    tokenizer,
    train: Dataset,
    *,
    max_length: int,
    steps: int,
    lr: float,
    batch_size: int,
    warmup: float = 0.1,
    weight_decay: float = 0.01,
    seed: int = 42,
    bf16: bool = False,
    on_step: Callable[[int, float], None] | None = None,
) -> FitResult:
    """Train `model` (a sequence-classification model) in place for `steps` optimizer steps of
    cross-entropy on `train`: AdamW, linear warmup over the first `warmup` fraction of the steps
    then linear decay to 0, gradient norm clipped at 1, batches of similar-length inputs padded to
    their longest member. The data are cycled as often as needed. `on_step(step, smoothed_loss)`."""
    if any(ex.label is None for ex in train):
        raise InputError(f"{train.name} ({train.split}) has unlabelled examples; training needs labels")
    seed_everything(seed)
    features = _encode(tokenizer, train, max_length)
    lengths = [len(f["input_ids"]) for f in features]
    accepted = set(inspect.signature(model.forward).parameters)
    no_decay_names = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")
    decay = [p for n, p in model.named_parameters() if not n.endswith(no_decay_names)]
    no_decay = [p for n, p in model.named_parameters() if n.endswith(no_decay_names)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )
    warm = max(1, round(warmup * steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warm if s < warm else max(0.0, (steps - s) / max(1, steps - warm))
    )
    generator = torch.Generator().manual_seed(seed)
    pad_id = tokenizer.pad_token_id or 0
    model.train()
    step, smoothed = 0, None
    started, cpu_started = time.perf_counter(), time.process_time()
    while step < steps:
        for batch_idx in length_grouped_batches(lengths, batch_size, generator):
            batch = _collate([features[i] for i in batch_idx], pad_id)
            batch = {k: v for k, v in batch.items() if k in accepted}
            labels = torch.tensor([train[i].label for i in batch_idx])
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = model(**batch).logits
            loss = torch.nn.functional.cross_entropy(logits.float(), labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            value = loss.item()
            if not math.isfinite(value):
                raise RuntimeError(f"training diverged at step {step} (loss {value})")
            smoothed = value if smoothed is None else 0.95 * smoothed + 0.05 * value
            if on_step is not None:
                on_step(step, smoothed)
            if step >= steps:
                break
    model.eval()
    return FitResult(step, smoothed, time.perf_counter() - started, time.process_time() - cpu_started)


def train_recipe(
    recipe: Recipe | str,
    *,
    max_steps: int | None = None,
    home: Path | None = None,
    progress: bool = True,
    seed: int | None = None,
    dev_limit: int | None = None,
    force: bool = True,
    bf16: bool | None = None,
) -> dict[str, Any]:
    """Fine-tune `recipe` from the shipped MiniLM encoder and save it to `<home>/models/<name>/`.

    max_steps: stop after this many optimizer steps (the learning-rate schedule is laid out for
    them; a quick, partial model, marked as such in the manifest). dev_limit: measure dev accuracy
    on the first N dev examples only. force=False keeps an already built model. bf16: autocast to
    bfloat16 (None: when the CPU supports it natively). Returns the manifest.
    """
    if isinstance(recipe, str):
        recipe = get_recipe(recipe)
    if max_steps is not None and max_steps < 1:
        raise InputError(f"--max-steps must be >= 1, got {max_steps}")
    if dev_limit is not None and dev_limit < 1:
        raise InputError(f"--dev-limit must be >= 1, got {dev_limit}")
    home = home or attattr_home()
    final = recipe_dir(recipe.name, home)
    recover_interrupted(recipe.name, home)
    if not force and is_built(recipe.name, home):
        return read_manifest(final) or {}
    seed = recipe.seed if seed is None else seed
    use_bf16 = bf16_supported() if bf16 is None else bf16
    started = time.perf_counter()
    load_before = _load_average()

    # data first: a missing data package fails before any model is loaded
    train = training_subset(load_dataset(recipe.dataset, "train"), recipe.train_examples, seed)
    dev = load_dataset(recipe.dataset, "dev", limit=dev_limit)
    label_names = list(train.label_names or [])

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from .bases import base_dir

    base = base_dir(recipe.base, home)  # the MPNet base is fetched and unpacked once
    seed_everything(seed)  # the classifier's initial weights
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(base)
        model = AutoModelForSequenceClassification.from_pretrained(
            base,
            num_labels=len(label_names),
            id2label=dict(enumerate(label_names)),
            label2id={n: i for i, n in enumerate(label_names)},
        )

    planned = recipe.num_steps(len(train))
    steps = min(planned, max_steps) if max_steps else planned
    threads = training_threads()
    with _threads(threads), _Progress(progress) as bars:
        advance = bars.task(f"training {recipe.name}", steps)
        fit = fine_tune(
            model,
            tokenizer,
            train,
            max_length=recipe.max_length,
            steps=steps,
            lr=recipe.lr,
            batch_size=recipe.batch_size,
            warmup=recipe.warmup,
            weight_decay=recipe.weight_decay,
            seed=seed,
            bf16=use_bf16,
            on_step=lambda step, loss: advance(1, f"loss {loss:.3f}"),
        )
        eval_started = time.perf_counter()
        advance_eval = bars.task(f"dev accuracy ({len(dev)} examples)", len(dev))
        accuracy, _ = evaluate(model, tokenizer, dev, max_length=recipe.max_length, on_batch=advance_eval)
        eval_seconds = time.perf_counter() - eval_started

    import transformers

    manifest = {
        "format": MANIFEST_FORMAT,
        "recipe": recipe.name,
        "settings": recipe.to_dict(),
        "dataset": recipe.dataset,
        "label_names": label_names,
        "train_examples": len(train),
        "data_fingerprint": train.fingerprint(),
        "dev_examples": len(dev),
        "dev_fingerprint": dev.fingerprint(),
        "seed": seed,
        "steps": fit.steps,
        "planned_steps": planned,
        "max_steps": max_steps,
        "epochs": recipe.epochs,
        "final_loss": fit.final_loss,
        "dev_accuracy": accuracy,
        "training_seconds": round(fit.seconds, 1),
        "training_cpu_seconds": round(fit.cpu_seconds, 1),
        "eval_seconds": round(eval_seconds, 1),
        # the machine's load average before and after: a shared machine inflates the times above
        "load_average": [load_before, _load_average()],
        "bf16": use_bf16,
        "threads": threads,
        "versions": {
            "attattr": __version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": sys.version.split()[0],
        },
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    with quiet_transformers():
        save_built(
            model, tokenizer, manifest, final, force=force, started=started, seconds_key="total_seconds"
        )
    return read_manifest(final) or manifest


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None
