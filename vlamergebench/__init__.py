"""vlamergebench: a benchmark for merging Vision-Language-Action experts into one generalist policy.

``import vlamergebench`` registers every Gymnasium environment id (``vlamergebench/*``), Gymnasium's
convention for third-party env packages: ``gym.make("vlamergebench/LIBERO-Object-v0", task=0)`` works after
it, as do ``gym.register_envs(vlamergebench)`` and ``gym.make("vlamergebench:vlamergebench/...")``.
Importing stays cheap: ids are registered by entry-point string, so neither torch nor mujoco nor robosuite
is imported (tests/test_imports.py checks this); ``gymnasium.make`` imports a family's simulator.
"""

__version__ = "0.1.0"

from vlamergebench import envs as _envs  # noqa: E402, F401  (registers the ids; after __version__ on purpose)
