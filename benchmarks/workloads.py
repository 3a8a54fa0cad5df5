"""The benchmark workloads: a seeded BERT-base-shaped classifier (no download) and fixed inputs."""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import transformers as tf

# A fixed English text (long enough for 512 tokens once repeated); its content does not matter
# for timing, only its length in tokens.
_TEXT = (
    "the film opens with a long, quiet shot of a harbour at dawn, and for a while nothing happens; "
    "then the fishermen arrive, arguing about the weather, the price of diesel and a daughter who "
    "left for the city years ago. it is a small story told with patience, and the actors never "
    "push: the old captain says more with a shrug than most scripts manage in a page of dialogue. "
    "some viewers will find the pace maddening, and the score leans too hard on the same four notes, "
    "but the last twenty minutes, when the storm finally comes, are as tense and as moving as "
    "anything released this year. "
)


@functools.cache
def minilm_tokenizer() -> tf.PreTrainedTokenizerBase:
    """The shipped MiniLM's WordPiece tokenizer (the bert-base-uncased vocabulary, 30,522 entries)."""
    from attattr.models import base_encoder_dir

    return tf.AutoTokenizer.from_pretrained(str(base_encoder_dir()))


def bert_base_random(seed: int = 0, num_labels: int = 2, init: float = 0.02) -> tf.PreTrainedModel:
    """BERT-base shape (12 layers x 12 heads, hidden 768, FFN 3072, 512 positions), seeded random
    weights with BERT's initialisation (normal, std `init`)."""
    torch.manual_seed(seed)
    config = tf.BertConfig(
        vocab_size=minilm_tokenizer().vocab_size,
        num_labels=num_labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        initializer_range=init,
    )
    model = tf.BertForSequenceClassification(config)
    model.set_attn_implementation("eager")
    return model.eval()


def text_of_tokens(tokenizer, n_tokens: int) -> str:
    """A text that encodes to exactly `n_tokens` tokens including [CLS] and [SEP]."""
    words = (_TEXT * (1 + 4 * n_tokens // len(_TEXT.split()))).split()
    lo, hi = 1, len(words)
    while lo < hi:  # the longest word prefix with at most n_tokens tokens
        mid = (lo + hi + 1) // 2
        if len(tokenizer(" ".join(words[:mid]))["input_ids"]) <= n_tokens:
            lo = mid
        else:
            hi = mid - 1
    text = " ".join(words[:lo])
    ids = tokenizer(text)["input_ids"][1:-1]
    while len(ids) + 2 < n_tokens:  # a word split into pieces may leave a gap: pad with "."
        ids.append(tokenizer.convert_tokens_to_ids("."))
    text = tokenizer.decode(ids)
    if len(tokenizer(text)["input_ids"]) != n_tokens:
        raise RuntimeError(f"could not build a {n_tokens}-token text")
    return text


def results_dir() -> Path:
    return Path(__file__).resolve().parent / "results"
