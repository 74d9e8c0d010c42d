"""Reset options shared by the env families: every family starts an episode from a numbered init state."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def reset_options(options: Mapping[str, Any] | None, valid: tuple[str, ...] = ("init_state_id",)) -> dict:
    """A copy of Gymnasium's ``reset(options=...)``; an unknown key raises, naming the valid ones."""
    options = dict(options or {})
    unknown = set(options) - set(valid)
    if unknown:
        raise ValueError(f"unknown reset options {sorted(unknown)}; valid options: {sorted(valid)}")
    return options
