"""Demonstrations in LIBERO's own HDF5 layout (docs/formats.md section 2): a writer and a reader, torch-free.

Files written here and LIBERO's official datasets read through the same code. The layout::

    /data             attrs: env_name, problem_info (JSON with language_instruction), env_args (JSON),
                             bddl_file_name, num_demos, total, macros_image_convention, vlamergebench (JSON)
    /data/demo_<i>    attrs: num_samples, init_state_id, model_file (optional)
        actions (T, A) float64, states (T, S) float64, rewards (T,) uint8, dones (T,) uint8,
        robot_states (T, R) float64 (optional), obs/<name> (T, ...) per observation

Which ``obs/`` entries are cameras and which form the policy's proprio is a :class:`DemoLayout`. Its
defaults are LIBERO's (cameras ``agentview_rgb`` -> ``agentview_image``, ``eye_in_hand_rgb`` ->
``wrist_image``; proprio ``ee_pos + ee_ori + gripper_states``, 8 floats); other env families (SO-101,
ALOHA) pass their own, and the writer stores it in the ``vlamergebench`` attribute so the reader finds it.

Images: ``macros_image_convention`` is ``"opengl"`` (rows bottom-up, LIBERO's own files; also assumed when
the attribute is absent, as LIBERO's convention) or ``"opencv"`` (upright; what this writer stores). The
reader always returns upright images.

Writing is crash-safe: :class:`DemoWriter` writes ``<path>.partial``, flushes after every demo, and renames
to ``<path>`` only in :meth:`DemoWriter.close`; ``resume=True`` reopens a partial file and appends.

Example::

    with DemoWriter("demos.hdf5", env_name="libero_object/0", problem_info={...}) as writer:
        writer.add_demo(actions, states, obs={"agentview_rgb": ..., "ee_pos": ..., ...})
    with DemoFile("demos.hdf5") as demos:
        for demo in demos:
            for step in demo.steps():   # {"agentview_image", "wrist_image", "state", "action"}
                ...
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlamergebench.configs import ConfigError, from_mapping

IMAGE_CONVENTIONS = ("opengl", "opencv")


class DemoError(ValueError):
    """A demonstration file or array does not follow the layout; the message names file and field."""


@dataclass(frozen=True)
class DemoLayout:
    """Which ``obs/`` datasets are cameras (and their policy keys) and which make the proprio vector.

    Attributes:
        cameras: HDF5 ``obs/`` name -> policy observation key, for every ``uint8 (T, H, W, 3)`` camera.
        proprio: ``obs/`` names concatenated, in order, into the policy's ``state``.
    """

    cameras: Mapping[str, str] = field(
        default_factory=lambda: {"agentview_rgb": "agentview_image", "eye_in_hand_rgb": "wrist_image"}
    )
    proprio: tuple[str, ...] = ("ee_pos", "ee_ori", "gripper_states")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "DemoLayout") -> DemoLayout:
        """Build from a dict (e.g. a file's JSON attribute); unknown keys raise :class:`DemoError`."""
        try:
            return from_mapping(cls, values, where)
        except ConfigError as error:
            raise DemoError(str(error)) from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; ``from_dict(to_dict())`` round-trips."""
        values = asdict(self)
        return {"cameras": dict(values["cameras"]), "proprio": list(values["proprio"])}


LIBERO_LAYOUT = DemoLayout()


@dataclass
class Demo:
    """One demonstration, loaded into memory.

    Attributes:
        name: ``demo_<i>``.
        actions: ``(T, A)`` float64, the action applied at step t.
        states: ``(T, S)`` float64 simulator states before step t (``None`` if the file has none).
        obs: every ``obs/`` dataset; camera entries already upright.
        attrs: the demo group's attributes.
        layout: the layout used to name cameras and build proprio.
    """

    name: str
    actions: np.ndarray
    states: np.ndarray | None
    obs: dict[str, np.ndarray]
    attrs: dict[str, Any]
    layout: DemoLayout = LIBERO_LAYOUT

    def __len__(self) -> int:
        return int(self.actions.shape[0])

    @property
    def proprio(self) -> np.ndarray:
        """``(T, P)`` float32: the layout's proprio entries concatenated (LIBERO: 8 floats)."""
        return np.concatenate([self.obs[k].reshape(len(self), -1) for k in self.layout.proprio], 1).astype(
            np.float32
        )

    def images(self) -> dict[str, np.ndarray]:
        """Camera arrays ``uint8 (T, H, W, 3)``, upright, under their policy keys."""
        return {key: self.obs[name] for name, key in self.layout.cameras.items()}

    def steps(self) -> Iterator[dict[str, np.ndarray]]:
        """Per step: every camera (upright) under its policy key, ``state`` (proprio) and ``action``."""
        images, proprio = self.images(), self.proprio
        for t in range(len(self)):
            yield {**{k: v[t] for k, v in images.items()}, "state": proprio[t], "action": self.actions[t]}


def _json_attr(attrs: Any, key: str, where: str) -> dict[str, Any]:
    if key not in attrs:
        return {}
    try:
        value = json.loads(attrs[key])
    except (TypeError, json.JSONDecodeError) as error:
        raise DemoError(f"{where}: attribute {key!r} is not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise DemoError(f"{where}: attribute {key!r} is JSON {type(value).__name__}, expected an object")
    return value


def _check_steps(where: str, arrays: Mapping[str, np.ndarray], steps: int) -> None:
    for key, array in arrays.items():
        if array.ndim == 0 or array.shape[0] != steps:
            raise DemoError(f"{where}: {key} has shape {array.shape}, expected ({steps}, ...) like actions")


class DemoWriter:
    """Append demos to a LIBERO-layout file; the file appears under its name only once closed.

    Args:
        path: the final ``.hdf5`` path.
        env_name: LIBERO's ``env_name`` attribute (we write ``<suite>/<task name>``).
        problem_info: must hold ``language_instruction``; also ``problem_name``, ``domain_name``.
        env_args: env constructor arguments (JSON-serialisable).
        bddl_file_name: the task's BDDL path (LIBERO), or ``""``.
        provenance: extra JSON stored under ``vlamergebench`` (with the layout).
        layout: cameras and proprio names; every demo must provide them.
        resume: reopen ``<path>.partial`` (if present) and append after its demos.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        env_name: str,
        problem_info: Mapping[str, Any],
        env_args: Mapping[str, Any] | None = None,
        bddl_file_name: str = "",
        provenance: Mapping[str, Any] | None = None,
        layout: DemoLayout = LIBERO_LAYOUT,
        resume: bool = False,
    ) -> None:
        import h5py

        if not problem_info.get("language_instruction"):
            raise DemoError(f"{path}: problem_info needs a non-empty 'language_instruction'")
        self.path = Path(path)
        self.partial_path = self.path.with_name(self.path.name + ".partial")
        self.layout = layout
        self.path.parent.mkdir(parents=True, exist_ok=True)
        mode = "a" if resume and self.partial_path.exists() else "w"
        try:
            self._file = h5py.File(self.partial_path, mode)
        except OSError as error:
            raise DemoError(
                f"{self.partial_path}: cannot reopen to resume ({error}); delete it to start over"
            ) from None
        data = self._file.require_group("data")
        for name in [n for n in data if n.startswith("demo_") and "num_samples" not in data[n].attrs]:
            del data[name]  # interrupted while writing: num_samples is the last thing a demo gets
        data.attrs.update(
            {
                "env_name": env_name,
                "problem_info": json.dumps(dict(problem_info)),
                "env_args": json.dumps(dict(env_args or {})),
                "bddl_file_name": bddl_file_name,
                "macros_image_convention": "opencv",
                "vlamergebench": json.dumps({**dict(provenance or {}), "layout": layout.to_dict()}),
            }
        )
        self._data = data

    @property
    def num_demos(self) -> int:
        """Demos written so far (including those found when resuming)."""
        return sum(1 for name in self._data if name.startswith("demo_"))

    def add_demo(
        self,
        actions: np.ndarray,
        states: np.ndarray,
        obs: Mapping[str, np.ndarray],
        *,
        rewards: np.ndarray | None = None,
        dones: np.ndarray | None = None,
        robot_states: np.ndarray | None = None,
        attrs: Mapping[str, Any] | None = None,
    ) -> str:
        """Write one demo (``T`` steps) and flush; returns its group name ``demo_<i>``.

        ``rewards``/``dones`` default to 0 everywhere but 1 at the last step (a successful demo).
        Cameras (``layout.cameras``) must be upright ``uint8 (T, H, W, 3)``.
        """
        actions = np.asarray(actions, dtype=np.float64)
        where = f"{self.partial_path}: new demo"
        if actions.ndim != 2 or actions.shape[0] == 0:
            raise DemoError(
                f"{where}: actions has shape {actions.shape}, expected (T, action_dim) with T > 0"
            )
        steps = actions.shape[0]
        terminal = np.zeros(steps, np.uint8)
        terminal[-1] = 1
        arrays = {
            "actions": actions,
            "states": np.asarray(states, dtype=np.float64),
            "rewards": np.asarray(terminal if rewards is None else rewards, dtype=np.uint8),
            "dones": np.asarray(terminal if dones is None else dones, dtype=np.uint8),
        }
        if robot_states is not None:
            arrays["robot_states"] = np.asarray(robot_states, dtype=np.float64)
        observations = {k: np.asarray(v) for k, v in obs.items()}
        missing = [k for k in (*self.layout.cameras, *self.layout.proprio) if k not in observations]
        if missing:
            raise DemoError(f"{where}: obs lacks {missing} (layout {self.layout.to_dict()})")
        for name in self.layout.cameras:
            frames = observations[name]
            if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
                raise DemoError(
                    f"{where}: obs/{name} is {frames.dtype} {frames.shape}, expected uint8 (T,H,W,3)"
                )
        _check_steps(where, arrays, steps)
        _check_steps(where + " obs", observations, steps)

        name = f"demo_{self.num_demos}"
        group = self._data.create_group(name)
        for key, array in arrays.items():
            group.create_dataset(key, data=array)
        for key, array in observations.items():
            if key in self.layout.cameras:  # lzf: fast, and readable by any h5py
                group.create_dataset(
                    f"obs/{key}", data=array, chunks=(1, *array.shape[1:]), compression="lzf"
                )
            else:
                group.create_dataset(f"obs/{key}", data=array)
        group.attrs["num_samples"] = steps
        group.attrs.update(dict(attrs or {}))
        self._file.flush()
        return name

    def update_provenance(self, values: Mapping[str, Any]) -> None:
        """Merge ``values`` into the ``vlamergebench`` attribute and flush (e.g. progress of a collection)."""
        stored = json.loads(self._data.attrs["vlamergebench"])
        stored.update(values)
        self._data.attrs["vlamergebench"] = json.dumps(stored)
        self._file.flush()

    def close(self) -> Path:
        """Write the totals and move the file to its final name; returns that path."""
        if self._file.id.valid:
            lengths = [int(self._data[n].attrs["num_samples"]) for n in self._data if n.startswith("demo_")]
            self._data.attrs["num_demos"] = len(lengths)
            self._data.attrs["total"] = sum(lengths)
            self._file.close()
            os.replace(self.partial_path, self.path)
        return self.path

    def abort(self) -> None:
        """Close without publishing: ``<path>.partial`` stays for a later ``resume=True``."""
        if self._file.id.valid:
            self._file.close()

    def __enter__(self) -> DemoWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class DemoFile:
    """Read a LIBERO-layout file (ours or LIBERO's official datasets).

    Args:
        path: the ``.hdf5`` file.
        layout: override the layout; by default the file's stored one, else LIBERO's.
    """

    def __init__(self, path: str | os.PathLike[str], layout: DemoLayout | None = None) -> None:
        import h5py

        self.path = Path(path)
        self._file = h5py.File(self.path, "r")
        if "data" not in self._file:
            self._file.close()
            raise DemoError(f"{self.path}: no /data group (not a LIBERO-layout demonstration file)")
        data = self._file["data"]
        where = f"{self.path}:/data"
        self.problem_info = _json_attr(data.attrs, "problem_info", where)
        self.env_args = _json_attr(data.attrs, "env_args", where)
        self.provenance = _json_attr(data.attrs, "vlamergebench", where)
        self.env_name = str(data.attrs.get("env_name", ""))
        self.image_convention = str(data.attrs.get("macros_image_convention", "opengl"))
        if self.image_convention not in IMAGE_CONVENTIONS:
            raise DemoError(
                f"{where}: macros_image_convention {self.image_convention!r}, expected {IMAGE_CONVENTIONS}"
            )
        stored = self.provenance.get("layout")
        self.layout = layout or (DemoLayout.from_dict(stored) if stored else LIBERO_LAYOUT)
        names = [n for n in data if n.startswith("demo_")]
        self.demo_names = sorted(names, key=lambda n: int(n.split("_")[1]))
        self._data = data

    @property
    def instruction(self) -> str:
        """``problem_info["language_instruction"]``."""
        instruction = self.problem_info.get("language_instruction")
        if not instruction:
            raise DemoError(f"{self.path}:/data: problem_info lacks 'language_instruction'")
        return str(instruction)

    def __len__(self) -> int:
        return len(self.demo_names)

    def read(self, name: str) -> Demo:
        """Load one demo; camera frames come back upright."""
        where = f"{self.path}:/data/{name}"
        if name not in self._data:
            raise DemoError(f"{self.path}: no demo {name!r}; demos: {self.demo_names[:5]}...")
        group = self._data[name]
        for key in ("actions", "obs"):
            if key not in group:
                raise DemoError(f"{where}: missing dataset {key!r}")
        actions = np.asarray(group["actions"], dtype=np.float64)
        if actions.ndim != 2:
            raise DemoError(f"{where}/actions: shape {actions.shape}, expected (T, action_dim)")
        obs = {key: np.asarray(group["obs"][key]) for key in group["obs"]}
        missing = [k for k in (*self.layout.cameras, *self.layout.proprio) if k not in obs]
        if missing:
            raise DemoError(f"{where}/obs: missing {missing} (layout {self.layout.to_dict()})")
        _check_steps(where + "/obs", obs, len(actions))
        if self.image_convention == "opengl":
            for camera in self.layout.cameras:
                obs[camera] = np.ascontiguousarray(obs[camera][:, ::-1])
        states = np.asarray(group["states"], dtype=np.float64) if "states" in group else None
        return Demo(name, actions, states, obs, dict(group.attrs), self.layout)

    def __iter__(self) -> Iterator[Demo]:
        for name in self.demo_names:
            yield self.read(name)

    def close(self) -> None:
        """Close the file (idempotent)."""
        self._file.close()

    def __enter__(self) -> DemoFile:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
