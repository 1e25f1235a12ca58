"""The rules of the adaptation settings, once: a recipe's protocol, the server's validation of a
request and the exported graph's own checks all apply these.

| signature input | Protocol field | rule |
|---|---|---|
| `inner_steps` | `eval_iters` | an integer >= 0 |
| `inner_batch_size` | `eval_batch` | an integer >= 1 |
| `learning_rate` | `learning_rate` | a finite number > 0 |

`transductive` is a bool and needs no rule. A server adds its own upper bounds (flags) on top.
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class AdaptationRule:
    """The lower bound of one adaptation setting.

    Args:
        key: str. The signatures' input name.
        field: str. The `Protocol` field it sets.
        minimum: float. The bound.
        strict: bool. The value must exceed the bound (else reach it).
        integer: bool. An integer setting (else a finite float).
    """

    key: str
    field: str
    minimum: float
    strict: bool
    integer: bool

    @property
    def expected(self) -> str:
        """The rule in words: 'an integer >= 0', 'a finite number > 0'."""
        what = "an integer" if self.integer else "a finite number"
        return f"{what} {'>' if self.strict else '>='} {self.minimum:g}"

    def holds(self, value) -> bool:
        if self.integer and (isinstance(value, bool) or int(value) != value):
            return False
        if not self.integer and not math.isfinite(value):
            return False
        return value > self.minimum if self.strict else value >= self.minimum

    def graph_check(self, tensor):
        """A `tf.debugging` assertion of the rule on a scalar tensor (for the exported graph, so
        `tensorflow_model_server` refuses what this package's server refuses)."""
        import tensorflow as tf

        message = f"{self.key} must be {self.expected}"
        bound = tf.constant(self.minimum, tensor.dtype)
        checks = []
        if not self.integer:
            checks.append(tf.debugging.assert_all_finite(tensor, message=message))
        compare = tf.debugging.assert_greater if self.strict else tf.debugging.assert_greater_equal
        checks.append(compare(tensor, bound, message=message))
        return checks


INNER_STEPS = AdaptationRule("inner_steps", "eval_iters", 0, strict=False, integer=True)
INNER_BATCH_SIZE = AdaptationRule("inner_batch_size", "eval_batch", 1, strict=False, integer=True)
LEARNING_RATE = AdaptationRule("learning_rate", "learning_rate", 0.0, strict=True, integer=False)
RULES = (INNER_STEPS, INNER_BATCH_SIZE, LEARNING_RATE)
BY_KEY = {rule.key: rule for rule in RULES}
BY_FIELD = {rule.field: rule for rule in RULES}
