"""The flags and the config dataclasses share their defaults: ``vlamergebench run`` with no ``--episodes``
must evaluate as many episodes as ``RunConfig()`` in Python (they were written out in four places and could
drift apart)."""

from __future__ import annotations

import pytest

from vlamergebench.cli import build_parser
from vlamergebench.eval.evaluate import EvalConfig
from vlamergebench.eval.run import RunConfig


@pytest.mark.parametrize(
    ("argv", "config"),
    [
        (["run", "--method", "ta"], RunConfig(method="ta")),
        (["eval", "--policy", "mypolicy:make"], EvalConfig(kind="policy", subject="mypolicy:make")),
    ],
)
def test_episodes_flag_defaults_to_the_config_default(argv, config):
    assert build_parser().parse_args(argv).episodes == config.episodes_per_task
