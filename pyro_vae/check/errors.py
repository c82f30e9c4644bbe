"""The one error a pair that breaks the contract raises: :class:`ModelGuideError`.

Its own module so that the estimators and objectives (which meet some broken rules only while they
run, e.g. a guide draw at the edge of the model's support) raise the same error as the checker.
"""

from __future__ import annotations

__all__ = ["ModelGuideError"]


class ModelGuideError(ValueError):
    """A model/guide pair breaks the contract; the message names the rule, the site and the way out."""
