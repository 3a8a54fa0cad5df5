"""Tiny random models and a tiny tokenizer, built in memory in well under a second."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import torch
import transformers as tf

ARCHITECTURES = ("bert", "roberta", "distilbert", "electra", "albert")
WORDS = "the a cat dog sat ran on mat with and down again of film good bad very not is it".split()


@functools.cache
def tiny_tokenizer():
    vocab = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        *WORDS,
        *[f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"],
    ]
    vocab += list("abcdefghijklmnopqrstuvwxyz")
    path = Path(tempfile.mkdtemp()) / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n")
    return tf.BertTokenizerFast(vocab_file=str(path), do_lower_case=True)


def tiny_model(
    arch: str = "bert",
    *,
    layers: int = 3,
    heads: int = 4,
    num_labels: int = 2,
    seed: int = 0,
    init: float = 0.02,
):
    """A seeded random classifier; `init` (the weights' std) above 0.1 makes its output clearly nonlinear."""
    torch.manual_seed(seed)
    vocab = tiny_tokenizer().vocab_size
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
    elif arch == "electra":
        model = tf.ElectraForSequenceClassification(tf.ElectraConfig(**common, embedding_size=16))
    elif arch == "albert":
        model = tf.AlbertForSequenceClassification(tf.AlbertConfig(**common, embedding_size=16))
    elif arch == "distilbert":
        cfg = tf.DistilBertConfig(
            vocab_size=vocab,
            dim=32,
            n_layers=layers,
            n_heads=heads,
            hidden_dim=64,
            max_position_embeddings=64,
            num_labels=num_labels,
            dropout=0.0,
            attention_dropout=0.0,
        )
        model = tf.DistilBertForSequenceClassification(cfg)
    else:
        raise ValueError(arch)
    model.set_attn_implementation("eager")
    return model.eval()
