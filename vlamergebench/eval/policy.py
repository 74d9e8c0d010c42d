"""What evaluation sees of a policy and a router (docs/formats.md section 5), and the checks it applies.

Evaluation never imports a model class: it receives a :class:`PolicySource` (a merged model instantiated per
skill, an expert bank, a scripted controller...) and, unless routing is ``oracle``, a :class:`Router`. Both
are built inside each worker process by a picklable zero-argument factory, so a model is never pickled and
every process owns its own copy.

Conventions:
    - ``Policy.predict(observation)`` returns a ``(chunk, action_dim)`` float array in env units; the rollout
      executes the whole chunk (stopping early on success or a time limit) and then asks again.
    - ``Policy.reset()`` is called at the start of every episode, after routing.
    - ``Router.route(observation, true_skill=...)`` is called once per episode, on the first observation after
      the settle steps, and returns one of ``PolicySource.skills``. The true skill is passed for the
      router's own record (``merge_methods`` routers keep a history); only the oracle may read it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Policy(Protocol):
    """A closed-loop controller for one skill."""

    def reset(self) -> None:
        """Forget everything of the previous episode."""

    def predict(self, observation: Mapping[str, Any]) -> np.ndarray:
        """Return the next action chunk, shape ``(chunk, action_dim)``, in env units."""


@runtime_checkable
class PolicySource(Protocol):
    """The skill hook: the policy to run once a skill is chosen (oracle or routed)."""

    @property
    def skills(self) -> Sequence[str]:
        """Every skill this source can instantiate, in admission order."""

    def policy(self, skill: str) -> Policy:
        """The policy for ``skill``; may be cached, and is ``reset()`` before each episode."""


@runtime_checkable
class Router(Protocol):
    """Chooses a skill from the first observation of an episode."""

    def route(self, observation: Mapping[str, Any], *, true_skill: str | None = None) -> str:
        """The skill to run this episode; ``true_skill`` is for the record (only an oracle reads it)."""


PolicySourceFactory = Callable[[], PolicySource]
RouterFactory = Callable[[], Router]


class PolicyContractError(TypeError):
    """A policy, policy source or router broke the contract above; the run stops (it is not a sim fault)."""


def check_policy_source(source: object) -> PolicySource:
    """Return ``source`` if it has ``skills`` and ``policy``; otherwise raise naming what is missing."""
    missing = [name for name in ("skills", "policy") if not hasattr(source, name)]
    if missing:
        raise PolicyContractError(f"{type(source).__name__} is not a PolicySource: it lacks {missing}")
    skills = list(source.skills)
    if not skills or len(set(skills)) != len(skills):
        raise PolicyContractError(f"{type(source).__name__}.skills must be unique names, got {skills}")
    return source


def check_router(router: object) -> Router:
    """Return ``router`` if it has a callable ``route``; otherwise raise."""
    if not callable(getattr(router, "route", None)):
        raise PolicyContractError(
            f"{type(router).__name__} is not a Router: it has no route(observation) method"
        )
    return router


def check_action_chunk(chunk: object, action_dim: int, who: str) -> np.ndarray:
    """The chunk as a float array ``(chunk, action_dim)``; a wrong shape or a non-finite value raises.

    Args:
        chunk: What ``predict`` returned.
        action_dim: The env's action dimension.
        who: Names the policy in the error (e.g. ``"policy of skill 'object_0'"``).
    """
    array = np.asarray(chunk, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] != action_dim:
        raise PolicyContractError(
            f"{who}: predict returned shape {array.shape}, expected (chunk >= 1, {action_dim})"
        )
    if not np.all(np.isfinite(array)):
        raise PolicyContractError(f"{who}: predict returned non-finite actions")
    return array


class SingleSkillSource:
    """Adapter: one policy object serving a fixed list of skills (a scripted controller, an unmerged expert).

    Args:
        policy: The policy run for every skill.
        skills: The skills it claims to serve.
    """

    def __init__(self, policy: Policy, skills: Sequence[str]) -> None:
        self._policy = policy
        self._skills = tuple(skills)

    @property
    def skills(self) -> Sequence[str]:
        """The skills given at construction."""
        return self._skills

    def policy(self, skill: str) -> Policy:
        """The one policy, for any known skill."""
        if skill not in self._skills:
            raise PolicyContractError(
                f"SingleSkillSource: unknown skill {skill!r}; known: {list(self._skills)}"
            )
        return self._policy
