"""Named tensor shapes, one notation for the whole package: `[layers, heads, query, key]`.

Each alias is a `torch.Tensor` annotated with its shape, so a signature says what it takes:
`def scores(...) -> LayerScores` reads as "a tensor [layers, heads, query, key]". The names:

  examples  the inputs of a batch, in the order given      rows    the rows inside the model: the
  classes   the classifier's outputs                               examples plus the copies forked
  seq       token positions of the padded batch                    from them (see `Origins`)
  query/key token positions of one attention matrix (row = query token, column = key token)
"""

from __future__ import annotations

from typing import Annotated

import torch

# attention of one layer for every row inside the model
Probs = Annotated[torch.Tensor, "[rows, heads, query, key]"]
# attributions or attentions of one example over the attributed layers
LayerScores = Annotated[torch.Tensor, "[layers, heads, query, key]"]
# one number per head (importance, gates)
HeadTable = Annotated[torch.Tensor, "[layers, heads]"]
# per-example head gates
ExampleHeadTable = Annotated[torch.Tensor, "[examples, layers, heads]"]
# multipliers of single attention entries of one layer
ConnectionGates = Annotated[torch.Tensor, "[rows, heads, query, key]"]
# for each row inside the model, the index of the example it was forked from
Origins = Annotated[torch.Tensor, "[rows]"]
# one scalar per row (the objective F)
RowValues = Annotated[torch.Tensor, "[rows]"]
# one value per example (targets, predictions)
ExampleValues = Annotated[torch.Tensor, "[examples]"]
# token ids or the padding mask of an encoded batch
TokenIds = Annotated[torch.Tensor, "[examples, seq]"]
# the last hidden states of the base model
Hidden = Annotated[torch.Tensor, "[rows, seq, hidden]"]
# class scores
Logits = Annotated[torch.Tensor, "[rows, classes]"]
ClassProbabilities = Annotated[torch.Tensor, "[examples, classes]"]

__all__ = [
    "ClassProbabilities",
    "ConnectionGates",
    "ExampleHeadTable",
    "ExampleValues",
    "HeadTable",
    "Hidden",
    "LayerScores",
    "Logits",
    "Origins",
    "Probs",
    "RowValues",
    "TokenIds",
]
