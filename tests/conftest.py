"""Fixtures shared by every test file.

attattr_home (autouse)  ATTATTR_HOME points to a fresh temporary directory in every test, so no
                        test reads or writes the user's model cache. The path is returned.
tiny_tok                a BERT WordPiece tokenizer over a ~100-entry vocabulary (TINY_WORDS, letters,
                        ##letters), built in memory; unknown words are spelt out in letters.
make_tiny_model         factory `make_tiny_model(arch="bert", *, layers=3, heads=4, num_labels=2,
                        seed=0, init=0.02)` for seeded random sequence classifiers of each
                        architecture in `TINY_ARCHITECTURES` (bert, roberta, distilbert, electra,
                        albert, xlm-roberta, modernbert) over tiny_tok's vocabulary: hidden 32, no
                        dropout, eager attention, eval mode, built in milliseconds. ModernBERT has
                        a local window of MODERNBERT_WINDOW tokens (layer 1) and mean pooling.
tiny_bert               make_tiny_model("bert").
save_tiny_model         factory `save_tiny_model(path, arch="bert", **kw) -> path`: a tiny classifier
                        and the tiny tokenizer saved as a Hugging Face directory (for `models.load`
                        and for CLI tests taking `--model DIR`).
Threads                 torch runs single-threaded in tests (ATTATTR_TEST_THREADS overrides).
run_cli                 `run_cli(*args) -> (exit_code, stdout, stderr)`: runs `attattr ARGS` in
                        process through the real entry point (errors become exit 2 and one line).
quick_rt_home (session) the `minilm-rt` recipe fine-tuned for QUICK_STEPS steps through
                        `attattr train minilm-rt --max-steps ... --dev-limit ...` into a session-wide
                        home; returns that home. Slow the first time (tens of seconds): only
                        integration tests (`@pytest.mark.integration`) should use it.
quick_rt_model (session) `models.load("minilm-rt")` from that home: a LoadedModel with `.model`,
                        `.tokenizer`, `.model_id == "minilm-rt"`, `.label_names`, `.max_length`.
                        Its accuracy is only somewhat above chance. To run CLI commands against it,
                        `monkeypatch.setenv("ATTATTR_HOME", str(quick_rt_home))`.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import pytest
import torch
import transformers as tf

TINY_ARCHITECTURES = ("bert", "roberta", "distilbert", "electra", "albert", "xlm-roberta", "modernbert")
# ModernBERT's local layers see |i - j| <= MODERNBERT_WINDOW // 2 (2 tokens each side): shorter than
# the test inputs, so the sliding window changes the numbers
MODERNBERT_WINDOW = 4
TINY_WORDS = (
    "the a an cat dog sat ran on mat with and down again of film movie good bad very not is it "
    "was great awful fun dull plot acting but this that so too"
).split()
QUICK_STEPS = 30
QUICK_DEV = 200

# Tiny models gain nothing from threads, and on a shared 2-core machine two threads per process
# made a tiny training step ~25x slower than one. Recipe training sets its own thread count.
torch.set_num_threads(int(os.environ.get("ATTATTR_TEST_THREADS", "1")))


@functools.cache
def build_tiny_tokenizer() -> tf.PreTrainedTokenizerBase:
    """A lower-casing BERT WordPiece tokenizer: specials, TINY_WORDS, letters and ##letters."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        *TINY_WORDS,
        *letters,
        *[f"##{c}" for c in letters],
    ]
    vocab += [".", ",", "!", "?", "'"]
    # transformers 5 takes the vocabulary as `vocab` (a dict or a path); `vocab_file` is ignored
    return tf.BertTokenizer(vocab={w: i for i, w in enumerate(dict.fromkeys(vocab))}, do_lower_case=True)


def build_tiny_model(
    arch: str = "bert",
    *,
    layers: int = 3,
    heads: int = 4,
    num_labels: int = 2,
    seed: int = 0,
    init: float = 0.02,
) -> tf.PreTrainedModel:
    """A seeded random sequence classifier over build_tiny_tokenizer()'s vocabulary: hidden 32,
    no dropout, eager attention, eval mode."""
    torch.manual_seed(seed)
    vocab = build_tiny_tokenizer().vocab_size
    common = dict(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=num_labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        initializer_range=init,
    )
    if arch == "bert":
        model = tf.BertForSequenceClassification(tf.BertConfig(**common))
    elif arch == "roberta":
        model = tf.RobertaForSequenceClassification(
            tf.RobertaConfig(**common, type_vocab_size=2, pad_token_id=0)
        )
    elif arch == "xlm-roberta":
        model = tf.XLMRobertaForSequenceClassification(
            tf.XLMRobertaConfig(**common, type_vocab_size=2, pad_token_id=0)
        )
    elif arch == "electra":
        model = tf.ElectraForSequenceClassification(tf.ElectraConfig(**common, embedding_size=16))
    elif arch == "albert":
        model = tf.AlbertForSequenceClassification(tf.AlbertConfig(**common, embedding_size=16))
    elif arch == "distilbert":
        config = tf.DistilBertConfig(
            vocab_size=vocab,
            dim=32,
            n_layers=layers,
            n_heads=heads,
            hidden_dim=64,
            max_position_embeddings=64,
            num_labels=num_labels,
            dropout=0.0,
            attention_dropout=0.0,
            initializer_range=init,
        )
        model = tf.DistilBertForSequenceClassification(config)
    elif arch == "modernbert":
        # RoPE, layers 0 and 2 global and layer 1 local (sliding window), mean pooling as the
        # released ModernBERT checkpoints use; no token_type_ids
        config = tf.ModernBertConfig(
            vocab_size=vocab,
            hidden_size=32,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=64,
            max_position_embeddings=64,
            num_labels=num_labels,
            initializer_range=init,
            local_attention=MODERNBERT_WINDOW,
            global_attn_every_n_layers=2,
            classifier_pooling="mean",
            pad_token_id=0,
            cls_token_id=2,
            sep_token_id=3,
            bos_token_id=2,
            eos_token_id=3,
        )
        model = tf.ModernBertForSequenceClassification(config)
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}; choose from {TINY_ARCHITECTURES}")
    model.set_attn_implementation("eager")
    return model.eval()


@pytest.fixture(autouse=True)
def attattr_home(tmp_path_factory, monkeypatch) -> Path:
    home = tmp_path_factory.mktemp("attattr-home")
    monkeypatch.setenv("ATTATTR_HOME", str(home))
    return home


@pytest.fixture
def tiny_tok():
    return build_tiny_tokenizer()


@pytest.fixture
def make_tiny_model():
    return build_tiny_model


@pytest.fixture
def tiny_bert():
    return build_tiny_model("bert")


@pytest.fixture
def save_tiny_model():
    def save(path: Path, arch: str = "bert", label_names: list[str] | None = None, **kwargs) -> Path:
        names = label_names or ["negative", "positive"]
        model = build_tiny_model(arch, num_labels=len(names), **kwargs)
        model.config.id2label = dict(enumerate(names))
        model.config.label2id = {n: i for i, n in enumerate(names)}
        model.save_pretrained(path)
        build_tiny_tokenizer().save_pretrained(path)
        return Path(path)

    return save


def pytest_collection_modifyitems(items):
    """Tests that drive a command (through `run_cli`, named test_cli_*, or in a *_cli.py file) form
    the CLI tier (marker `cli`); the rest of tests/unit is the unit tier."""
    for item in items:
        by_name = item.name.startswith("test_cli") or item.path.name.endswith("_cli.py")
        if by_name or "run_cli" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cli)


@pytest.fixture
def run_cli(monkeypatch, capsys):
    def run(*args) -> tuple[int, str, str]:
        from attattr.cli import main

        monkeypatch.setattr(sys, "argv", ["attattr", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="session")
def quick_rt_home(tmp_path_factory) -> Path:
    from typer.testing import CliRunner

    import attattr.cli  # noqa: F401  (registers the commands)
    from attattr.cli.app import app

    home = tmp_path_factory.mktemp("quick-rt-home")
    args = ["train", "minilm-rt", "--max-steps", str(QUICK_STEPS), "--dev-limit", str(QUICK_DEV), "--json"]
    result = CliRunner().invoke(app, args, env={"ATTATTR_HOME": str(home)})
    if result.exit_code != 0:
        raise RuntimeError(f"quick minilm-rt training failed: {result.output}") from result.exception
    return home


@pytest.fixture(scope="session")
def quick_rt_model(quick_rt_home):
    from attattr import models

    return models.load("minilm-rt", home=quick_rt_home, build=False, quiet=True)
