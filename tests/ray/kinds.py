"""A shard function for the Ray tests: real attributions of each shard's batch with the engine.

Registered as "test.ray.heads" when imported; Ray workers import it through the executor's `imports`.
Settings: steps (integration nodes), fail_on (an example id whose shard raises InputError naming it),
sleep (seconds to wait per shard, so that a test can kill a worker while shards are running)."""

from __future__ import annotations

import time

from attattr.analyses.runs import register_shard_function
from attattr.core.engine import attribute_many
from attattr.core.errors import InputError

KIND = "test.ray.heads"
WORDS = "the a cat dog sat ran on mat with and film movie good bad very not is it was great awful fun".split()


def texts(n: int) -> list[str]:
    """n deterministic texts of 3..14 words."""
    return [" ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(3 + (i * 5) % 12)) for i in range(n)]


@register_shard_function(KIND)
def head_scores(model, tokenizer, examples, job):
    settings = job.settings
    bad = settings.get("fail_on")
    if bad in [x.id for x in examples]:
        raise InputError(f"example {bad}: cannot be attributed (a test failure)")
    time.sleep(settings.get("sleep", 0))
    attributions = attribute_many(
        model, tokenizer, examples, batch_size=len(examples), steps=settings.get("steps", 4)
    )
    return [
        {
            "id": x.id,
            "predicted": a.predicted,
            "output": a.output_value,
            "heads": a.head_importance().tolist(),  # [layers, heads]: max attribution per head
        }
        for x, a in zip(examples, attributions, strict=True)
    ]
