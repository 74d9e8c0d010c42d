"""Model directories where the policies run: the path itself, or a local copy of its files.

A contender names the directories its factories read (:attr:`~vlamergebench.eval.work.Contender.model_dirs`:
a merged model and its base checkpoint, a checkpoint and its base). Where that path shows the same
directory as on the machine that planned the run (same file names and sizes, same JSON manifests), it is
read in place: one machine, or a shared file system. Elsewhere an executor brings the files over (the Ray
executor through Ray's object store) and writes them into a local temporary directory once per process;
:func:`use_copy` records it, and the factories open :func:`local_dir` of their path, which is that copy.

Only the files' bytes travel: they are written as files again and read with safetensors and JSON, as from
the original directory (nothing is unpickled).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

_LOCAL_COPIES: dict[str, str] = {}


def dir_key(path: str | os.PathLike[str]) -> str:
    """The spelling of ``path`` that copies are recorded under (normalised, not resolved)."""
    return os.path.normpath(os.fspath(path))


def local_dir(path: str | os.PathLike[str]) -> str:
    """The directory to read for ``path`` in this process: its local copy if one was made, else ``path``."""
    return _LOCAL_COPIES.get(dir_key(path), os.fspath(path))


def use_copy(path: str | os.PathLike[str], copy: str | os.PathLike[str]) -> None:
    """Read ``copy`` wherever a factory in this process opens ``path``."""
    _LOCAL_COPIES[dir_key(path)] = os.fspath(copy)


def forget_copies() -> list[str]:
    """Forget every recorded copy; returns the copies' directories (for their owner to delete)."""
    copies = list(_LOCAL_COPIES.values())
    _LOCAL_COPIES.clear()
    return copies


def directory_files(path: str | os.PathLike[str]) -> list[str]:
    """Relative paths (``/``-separated, sorted) of the regular files under ``path``, links followed."""
    root = Path(path)
    return sorted(
        file.relative_to(root).as_posix()
        for file in root.rglob("*")
        if file.is_file() and not any(part.startswith(".") for part in file.relative_to(root).parts)
    )


def fingerprint(path: str | os.PathLike[str]) -> str | None:
    """What says two directories hold the same model, cheaply: file names and sizes, and every JSON file.

    The manifests (``merged.json``, ``config.json``) carry the config hash, the expert-set and base ids, so a
    stale or different directory at the same path differs here. None when ``path`` is not a directory.
    """
    root = Path(path)
    if not root.is_dir():
        return None
    digest = hashlib.sha256()
    for relative in directory_files(root):
        file = root / relative
        digest.update(f"{relative}\0{file.stat().st_size}\0".encode())
        if relative.endswith(".json"):
            digest.update(file.read_bytes())
    return digest.hexdigest()


def model_dirs_of(paths: Iterable[str | os.PathLike[str] | None]) -> tuple[str, ...]:
    """The distinct directories among ``paths`` (None dropped), as :func:`dir_key` spells them."""
    return tuple(dict.fromkeys(dir_key(path) for path in paths if path is not None))


def write_copy(files: Iterator[tuple[str, Any]], prefix: str = "vlamergebench-model-") -> Path:
    """Write ``(relative path, bytes-like)`` pairs into a new temporary directory; returns it.

    A relative path that is absolute or climbs out (``..``) raises ``ValueError``, and nothing is kept.
    """
    root = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        for relative, data in files:
            parts = Path(relative).parts
            if Path(relative).is_absolute() or ".." in parts or not parts:
                raise ValueError(f"model file {relative!r}: expected a path inside the model directory")
            target = root.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("wb") as handle:
                handle.write(data)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return root
