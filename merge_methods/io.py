"""Streaming tensor I/O for merging: one tensor at a time in, one tensor at a time out.

Three pieces, after MergeKit's ``ShardedTensorIndex`` / ``LazyTensorLoader`` / ``TensorWriter`` (read at
``a6e4028``), rewritten for our checkpoint format (``docs/formats.md`` section 3):

- :class:`TensorFile` parses a safetensors header itself (names, dtypes, shapes, byte ranges) and reads single
  tensors with plain positioned reads into fresh buffers. (``safetensors.safe_open`` memory-maps the file,
  and every page a merge touches then counts in its resident set: 6.5 GiB for MergeKit's TA in
  ``benchmarks/merge_speed.py``. Plain reads keep peak RSS at what the merge holds.) A file shorter than its
  header promises is reported at open time, naming the first tensor that lies past the end, so a truncated
  download never half-merges.
- :class:`CheckpointIndex` maps every tensor name of a checkpoint directory to its file, and
  :class:`ExpertView` gives an expert's *task-vector view*: for a LoRA target ``<module>.weight`` the dense
  ``tau = (alpha / rank) * B @ A`` (or ``W_expert - W_base`` from ``dense.safetensors``), computed per tensor
  in float32, plus the raw factor view (A, B, scale) that factor-space methods such as RobustMerge need.
  Constructing a view checks the expert's inventory against the base (missing/extra tensors, shapes, dtypes)
  from headers alone; reading a tensor checks it is finite.
- :class:`StreamingSafetensorsWriter` writes a safetensors file whose header is known up front (merged tensors
  have the base's names, shapes and dtypes), so tensors stream to disk as they are produced and peak memory
  does not grow with the file. One file per logical component replaces MergeKit's size-based shards: sharding
  exists to bound memory, which streaming already does. :class:`AtomicDirectory` builds the output in a
  hidden sibling directory and renames it into place only when complete, so a failed merge leaves nothing
  that looks finished.

Every error is a :class:`MergeInputError` naming the checkpoint (expert skill or "base"), the file and the
tensor, with what was expected against what was found.
"""

from __future__ import annotations

import ctypes
import glob
import json
import math
import os
import shutil
import struct
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlamergebench.policies.checkpoint import (
    ACTION_EXPERT_FILE,
    DENSE_FILE,
    LORA_A_SUFFIX,
    LORA_B_SUFFIX,
    LORA_FILE,
    VLM_FILE,
    CheckpointDir,
)

# safetensors dtype codes <-> torch dtypes (the subset checkpoints and merged models use).
DTYPES: dict[str, torch.dtype] = {
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "F32": torch.float32,
    "F64": torch.float64,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_CODES = {dtype: code for code, dtype in DTYPES.items()}
_COPY_CHUNK_BYTES = 64 << 20


class MergeInputError(ValueError):
    """An input checkpoint is unusable; the message names the checkpoint, file and tensor."""


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to serve large buffers from the heap and keep freed memory for reuse.

    A streaming merge allocates and frees tensor-sized buffers thousands of times. By default glibc maps each
    large buffer afresh and the kernel zero-fills it page by page: in ``benchmarks/merge_speed.py`` that was
    6 s of system time in a 10 s (CPU) Task Arithmetic. Reusing the memory removes it; peak memory is
    unchanged. Process-wide, so only entry points call it (``vlamergebench merge``). Returns False without
    glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))


def as_float32(tensor: torch.Tensor) -> torch.Tensor:
    """A float32 copy of ``tensor`` (the tensor itself if already float32).

    bfloat16 is widened by placing its 16 bits above 16 zero bits: exact, and about 4x less CPU than
    ``Tensor.float()`` on this project's CPU (2.0 ms against 8.3 ms for 4.4 M entries, one thread).
    """
    if tensor.dtype == torch.float32:
        return tensor
    if tensor.dtype != torch.bfloat16 or not tensor.is_contiguous():
        return tensor.float()
    halves = np.zeros((tensor.numel(), 2), dtype=np.int16)
    halves[:, 1] = (
        tensor.view(torch.int16).numpy().reshape(-1)
    )  # little-endian: the high half holds bf16's bits
    return torch.from_numpy(halves).view(torch.float32).reshape(tensor.shape)


def count_non_finite(tensor: torch.Tensor) -> int:
    """Number of NaN/Inf entries, exactly, at the cost of one vectorised sum in the usual all-finite case.

    Any NaN or Inf makes the sum non-finite; only a non-finite sum (a real NaN/Inf, or an overflow of huge
    finite values) pays for the entry-by-entry count.
    """
    if bool(torch.isfinite(tensor.sum())):
        return 0
    return int((~torch.isfinite(tensor)).sum())


def check_finite_tensor(tensor: torch.Tensor, what: str) -> None:
    """Raise naming ``what`` if ``tensor`` holds a NaN or Inf."""
    bad = count_non_finite(tensor)
    if bad:
        raise MergeInputError(f"{what} has {bad} NaN/Inf values")


def _header_entry(entry: Any, where: str) -> tuple[torch.dtype, tuple[int, ...], int, int]:
    """``(dtype, shape, begin, end)`` of one safetensors header entry, every field checked."""
    malformed = f"{where}: malformed header entry {json.dumps(entry)[:120]}"
    if not isinstance(entry, dict):
        raise MergeInputError(f"{malformed}; expected an object with dtype, shape and data_offsets")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not (
        isinstance(shape, list)
        and all(type(size) is int and size >= 0 for size in shape)
        and isinstance(offsets, list)
        and len(offsets) == 2
        and all(type(offset) is int for offset in offsets)
        and 0 <= offsets[0] <= offsets[1]
    ):
        raise MergeInputError(
            f"{malformed}; expected shape a list of sizes and data_offsets [begin, end] with begin <= end"
        )
    if dtype not in DTYPES:
        raise MergeInputError(f"{where} has unsupported dtype {dtype!r}; supported: {sorted(DTYPES)}")
    needed = math.prod(shape) * DTYPES[dtype].itemsize
    if offsets[1] - offsets[0] != needed:
        raise MergeInputError(
            f"{where} holds {offsets[1] - offsets[0]} bytes; dtype {dtype} and shape {shape} need {needed}"
        )
    return DTYPES[dtype], tuple(shape), offsets[0], offsets[1]


class TensorFile:
    """One safetensors file: header parsed eagerly, tensors read lazily, one at a time.

    Args:
        path: The ``.safetensors`` file.
        owner: Who the file belongs to, for error messages (e.g. ``"expert 'pick_bowl'"``).
    """

    def __init__(self, path: str | os.PathLike[str], owner: str) -> None:
        self.path = Path(path)
        self.owner = owner
        self._handle: Any = None
        not_safetensors = (
            f"{owner}: {self.path} is not a safetensors file (expected an 8-byte header length and a JSON "
            "header; a pickle or torch.save file is never loaded)"
        )
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as handle:
                prefix = handle.read(9)
                if len(prefix) < 9:
                    raise MergeInputError(f"{owner}: {self.path} is truncated ({size} bytes, no header)")
                if prefix[8:9] != b"{":
                    raise MergeInputError(not_safetensors)
                (header_bytes,) = struct.unpack("<Q", prefix[:8])
                if 8 + header_bytes > size:
                    raise MergeInputError(
                        f"{owner}: {self.path} is truncated: header needs {header_bytes} bytes, "
                        f"file has {size}"
                    )
                handle.seek(8)
                header = json.loads(handle.read(header_bytes))
        except FileNotFoundError:
            raise MergeInputError(f"{owner}: {self.path} is missing") from None
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
            raise MergeInputError(
                f"{owner}: {self.path} has a corrupt safetensors header ({error})"
            ) from None
        if not isinstance(header, dict):
            raise MergeInputError(not_safetensors)
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        if not isinstance(self.metadata, dict):
            raise MergeInputError(f"{owner}: {self.path}: malformed header: __metadata__ is not an object")
        self.data_start = 8 + header_bytes
        self._entries: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}
        for name, entry in header.items():
            dtype, shape, begin, end = _header_entry(entry, f"{owner}: {self.path}: tensor {name!r}")
            if self.data_start + end > size:
                raise MergeInputError(
                    f"{owner}: {self.path} is truncated: tensor {name!r} ends at byte "
                    f"{self.data_start + end}, file has {size} bytes"
                )
            self._entries[name] = (dtype, shape, begin, end)

    @property
    def names(self) -> list[str]:
        """Tensor names in on-disk order."""
        return sorted(self._entries, key=lambda name: self._entries[name][2])

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def dtype(self, name: str) -> torch.dtype:
        """The stored dtype of ``name``."""
        return self._entry(name)[0]

    def shape(self, name: str) -> tuple[int, ...]:
        """The stored shape of ``name``."""
        return self._entry(name)[1]

    def nbytes(self, name: str) -> int:
        """Bytes of ``name``'s data."""
        _, _, begin, end = self._entry(name)
        return end - begin

    def _entry(self, name: str) -> tuple[torch.dtype, tuple[int, ...], int, int]:
        try:
            return self._entries[name]
        except KeyError:
            raise MergeInputError(f"{self.owner}: {self.path} has no tensor {name!r}") from None

    def read(self, name: str, check_finite: bool = True) -> torch.Tensor:
        """Read one tensor into fresh memory; a NaN or Inf raises naming the owner, file and tensor.

        Plain reads (not ``safe_open``'s memory map) keep the file's pages out of this process's resident set,
        so peak RSS measures what the merge holds, not what it has read.
        """
        dtype, shape, begin, end = self._entry(name)
        buffer = torch.empty(end - begin, dtype=torch.uint8)
        if end > begin:
            if self._handle is None:
                self._handle = open(self.path, "rb", buffering=0)  # noqa: SIM115 (kept open for later reads)
            self._handle.seek(self.data_start + begin)
            view = memoryview(buffer.numpy())
            done = 0
            while done < len(view):
                count = self._handle.readinto(view[done:])
                if not count:
                    raise MergeInputError(f"{self.owner}: {self.path}: tensor {name!r} is truncated")
                done += count
        tensor = buffer.view(dtype).reshape(shape)
        if check_finite and tensor.is_floating_point():
            check_finite_tensor(tensor, f"{self.owner}: {self.path}: tensor {name!r}")
        return tensor

    def close(self) -> None:
        """Close the read handle (reopened on the next read)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def copy_bytes(self, name: str, out: Any) -> None:
        """Copy ``name``'s raw bytes into the binary file object ``out`` in bounded chunks."""
        _, _, begin, end = self._entry(name)
        with open(self.path, "rb") as handle:
            handle.seek(self.data_start + begin)
            remaining = end - begin
            while remaining:
                chunk = handle.read(min(remaining, _COPY_CHUNK_BYTES))
                if not chunk:
                    raise MergeInputError(f"{self.owner}: {self.path}: tensor {name!r} is truncated")
                out.write(chunk)
                remaining -= len(chunk)


class CheckpointIndex:
    """Name -> file index of one checkpoint directory (every safetensors file of its role)."""

    def __init__(self, checkpoint: CheckpointDir, owner: str) -> None:
        """Open the headers of ``checkpoint``'s tensor files; ``owner`` labels errors."""
        self.checkpoint = checkpoint
        self.owner = owner
        if checkpoint.role == "base":
            names = [VLM_FILE, ACTION_EXPERT_FILE]
        else:
            names = [ACTION_EXPERT_FILE] + [f for f in (LORA_FILE, DENSE_FILE) if checkpoint.has(f)]
        self.files = {name: TensorFile(checkpoint.file(name), owner) for name in names}

    def file(self, name: str) -> TensorFile:
        """The file ``name`` (e.g. ``lora.safetensors``); raises if the checkpoint lacks it."""
        if name not in self.files:
            raise MergeInputError(f"{self.owner}: {self.checkpoint.path} has no {name}")
        return self.files[name]


def _check_same_inventory(found: TensorFile, reference: TensorFile, what: str) -> None:
    missing = [name for name in reference.names if name not in found]
    extra = [name for name in found.names if name not in reference]
    if missing or extra:
        raise MergeInputError(
            f"{found.owner}: {found.path}: {what} tensors differ from {reference.owner}'s: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}"
        )
    for name in reference.names:
        _check_tensor_matches(found, name, reference.shape(name), reference.dtype(name), reference.owner)


def _check_tensor_matches(
    found: TensorFile, name: str, shape: Sequence[int], dtype: torch.dtype, reference: str
) -> None:
    if tuple(found.shape(name)) != tuple(shape):
        raise MergeInputError(
            f"{found.owner}: {found.path}: tensor {name!r} has shape {list(found.shape(name))}, "
            f"{reference} has {list(shape)}"
        )
    if found.dtype(name) != dtype:
        raise MergeInputError(
            f"{found.owner}: {found.path}: tensor {name!r} has dtype {found.dtype(name)}, "
            f"{reference} has {dtype}"
        )


class ExpertView:
    """An expert seen as task vectors against the base, one tensor at a time.

    A dense expert (a full fine-tune: ``dense.safetensors`` and no LoRA) has one task vector, ``W_expert -
    W_base`` over the VLM tensors its file holds, whatever ``source`` asks; :meth:`factors` refuses it.

    Args:
        expert: The expert checkpoint.
        base: The base's index (its ``vlm.safetensors`` defines names, shapes and dtypes).
        source: ``"lora"``: tau from the factors, ``scale * B @ A`` in float32 (exact); ``"dense"``: tau from
            ``dense.safetensors`` as ``W_expert - W_base`` in float32 (exact for the folded, stored expert).
    """

    def __init__(self, expert: CheckpointDir, base: CheckpointIndex, source: str = "lora") -> None:
        if source not in ("lora", "dense"):
            raise ValueError(f"task-vector source must be 'lora' or 'dense', got {source!r}")
        self.skill = str(expert.skill)
        self.checkpoint = expert
        self.index = CheckpointIndex(expert, f"expert {self.skill!r}")
        self.base = base
        base_vlm = base.file(VLM_FILE)
        _check_same_inventory(
            self.index.file(ACTION_EXPERT_FILE), base.file(ACTION_EXPERT_FILE), "action-expert"
        )
        self.modules: dict[str, str] = {}  # "<module>.weight" -> "<module>" (a dense expert: name -> name)
        if expert.is_dense_expert:
            self.source, self.scale = "dense", 0.0
            dense = self.index.file(DENSE_FILE)
            self.modules.update((name, name) for name in dense.names)
            for name in dense.names:
                if name not in base_vlm:
                    raise MergeInputError(
                        f"{dense.owner}: {dense.path}: tensor {name!r} is not in the base's {VLM_FILE}"
                    )
                _check_tensor_matches(dense, name, base_vlm.shape(name), base_vlm.dtype(name), "base")
            return
        self.source = source
        self.scale = expert.lora_scale
        lora = self.index.file(LORA_FILE)
        for name in lora.names:
            if not name.endswith((LORA_A_SUFFIX, LORA_B_SUFFIX)):
                raise MergeInputError(
                    f"{lora.owner}: {lora.path}: unexpected tensor {name!r} (not lora_A/lora_B)"
                )
            module = name.rsplit(".", 1)[0]
            self.modules[module + ".weight"] = module
        for weight_name, module in self.modules.items():
            a_name, b_name = module + LORA_A_SUFFIX, module + LORA_B_SUFFIX
            for part in (a_name, b_name):
                if part not in lora:
                    raise MergeInputError(
                        f"{lora.owner}: {lora.path}: tensor {part!r} is missing (its pair exists)"
                    )
            if weight_name not in base_vlm:
                raise MergeInputError(
                    f"{lora.owner}: {lora.path}: LoRA target {module!r} has no {weight_name!r} "
                    f"in the base's {VLM_FILE}"
                )
            out_dim, in_dim = base_vlm.shape(weight_name)
            rank = lora.shape(a_name)[0]
            _check_tensor_matches(lora, a_name, (rank, in_dim), lora.dtype(a_name), "the base weight")
            _check_tensor_matches(lora, b_name, (out_dim, rank), lora.dtype(a_name), f"{a_name!r}")
        if source == "dense":
            dense = self.index.file(DENSE_FILE)
            if set(dense.names) != set(self.modules):
                raise MergeInputError(f"{dense.owner}: {dense.path}: tensors differ from the LoRA targets")
            for name in dense.names:
                _check_tensor_matches(dense, name, base_vlm.shape(name), base_vlm.dtype(name), "base")

    def is_target(self, name: str) -> bool:
        """Whether the VLM tensor ``name`` is one of this expert's LoRA targets (its tau may be non-zero)."""
        return name in self.modules

    def factors(self, weight_name: str) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(A (rank, in), B (out, rank), scale) of a target, as stored; a dense expert raises."""
        if self.checkpoint.is_dense_expert:
            raise MergeInputError(lora_factors_needed(self.checkpoint, "this method"))
        module = self.modules[weight_name]
        lora = self.index.file(LORA_FILE)
        return lora.read(module + LORA_A_SUFFIX), lora.read(module + LORA_B_SUFFIX), self.scale

    def task_vector(
        self, name: str, base_weight: torch.Tensor | None = None, check: bool = True
    ) -> torch.Tensor:
        """Float32 tau of a VLM tensor (zeros for a non-target); ``base_weight`` saves a re-read.

        With ``check=False`` the caller promises to check a result that every NaN/Inf of tau reaches (a plain
        sum does) and to call :meth:`check_inputs` when it fails.
        """
        if name not in self.modules:
            return torch.zeros(self.base.file(VLM_FILE).shape(name), dtype=torch.float32)
        if self.source == "dense":
            if base_weight is None:
                base_weight = self.base.file(VLM_FILE).read(name)
            tau = as_float32(self.index.file(DENSE_FILE).read(name, check_finite=False)).sub_(
                as_float32(base_weight)
            )
        else:
            module = self.modules[name]
            lora = self.index.file(LORA_FILE)
            a = lora.read(module + LORA_A_SUFFIX, check_finite=False)
            b = lora.read(module + LORA_B_SUFFIX, check_finite=False)
            tau = (b.float() @ a.float()).mul_(self.scale)
        if check and count_non_finite(tau):  # one check of the result: any NaN/Inf in the inputs reaches it
            self.check_inputs(name)
        return tau

    def weight(self, name: str, base_float: torch.Tensor) -> torch.Tensor:
        """The expert's float32 weight of a VLM tensor, from ``dense.safetensors``, unchecked.

        For a non-target this is ``base_float`` itself, not a copy. Like ``task_vector(check=False)``, the
        caller checks a result every NaN/Inf reaches.
        """
        if name not in self.modules:
            return base_float
        if self.source != "dense":
            raise ValueError(
                f"expert {self.skill!r}: weight() reads dense.safetensors; the view reads {self.source}"
            )
        return as_float32(self.index.file(DENSE_FILE).read(name, check_finite=False))

    def check_inputs(self, name: str) -> None:
        """Raise for a non-finite task vector of ``name``, naming the input file and tensor at fault.

        The inputs are re-read with checks; if they are all finite, the task vector itself overflowed.
        """
        self.base.file(VLM_FILE).read(name)
        if self.source == "dense":
            self.index.file(DENSE_FILE).read(name)
        else:
            self.factors(name)
        raise MergeInputError(
            f"expert {self.skill!r}: the task vector of {name!r} overflows (its inputs are finite)"
        )

    def action_expert(self, name: str) -> torch.Tensor:
        """One tensor of the expert's action expert (head, queries, proprio projector), as stored."""
        return self.index.file(ACTION_EXPERT_FILE).read(name)


def reads_base(views: Sequence[ExpertView]) -> bool:
    """Whether any view takes tau against the base weight (a dense view), so a caller should pass it."""
    return any(view.source == "dense" for view in views)


def lora_factors_needed(expert: CheckpointDir, method: str) -> str:
    """The one-line refusal of a dense expert by a method that works on LoRA factors."""
    return (
        f"expert {expert.skill!r} ({expert.path}): found a dense task vector ({DENSE_FILE}, a full "
        f"fine-tune); {method} needs LoRA factors ({LORA_FILE}: lora_A, lora_B)"
    )


def open_views(
    base: CheckpointDir, experts: Iterable[CheckpointDir], source: str
) -> tuple[CheckpointIndex, list[ExpertView]]:
    """The base index and a validated task-vector view of each expert."""
    base_index = CheckpointIndex(base, "base")
    return base_index, [ExpertView(expert, base_index, source) for expert in experts]


TensorSpec = tuple[str, torch.dtype, Sequence[int]]


class StreamingSafetensorsWriter:
    """Write a safetensors file tensor by tensor; the header (names, dtypes, shapes) is declared up front.

    Tensors must be written in the declared order; ``close`` raises unless every declared tensor was written.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        specs: Sequence[TensorSpec],
        metadata: Mapping[str, str] | None = None,
    ):
        """Open ``path`` and write the header for ``specs`` = [(name, dtype, shape), ...]."""
        self.path = Path(path)
        self._order: list[tuple[str, torch.dtype, tuple[int, ...], int]] = []
        header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
        offset = 0
        for name, dtype, shape in specs:
            shape = tuple(int(dim) for dim in shape)
            numel = 1
            for dim in shape:
                numel *= dim
            nbytes = numel * torch.empty((), dtype=dtype).element_size()
            header[name] = {
                "dtype": DTYPE_CODES[dtype],
                "shape": list(shape),
                "data_offsets": [offset, offset + nbytes],
            }
            self._order.append((name, dtype, shape, nbytes))
            offset += nbytes
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (
            -len(encoded) % 8
        )  # the data buffer starts 8-byte aligned, as safetensors writes it
        self._file = open(self.path, "wb")  # noqa: SIM115 (closed by close(), the writer's lifetime)
        self._file.write(struct.pack("<Q", len(encoded)) + encoded)
        self._next = 0

    def _expect(self, name: str) -> tuple[torch.dtype, tuple[int, ...], int]:
        if self._next >= len(self._order):
            raise ValueError(
                f"{self.path}: tensor {name!r} was not declared (all declared tensors are written)"
            )
        expected, dtype, shape, nbytes = self._order[self._next]
        if name != expected:
            raise ValueError(f"{self.path}: expected tensor {expected!r} next, got {name!r}")
        self._next += 1
        return dtype, shape, nbytes

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write the next declared tensor; its dtype and shape must match the declaration."""
        dtype, shape, _ = self._expect(name)
        if tensor.dtype != dtype or tuple(tensor.shape) != shape:
            raise ValueError(
                f"{self.path}: tensor {name!r} declared {dtype} {list(shape)}, "
                f"got {tensor.dtype} {list(tensor.shape)}"
            )
        flat = tensor.detach().contiguous().reshape(-1)
        if flat.numel():
            self._file.write(flat.view(torch.uint8).numpy().data)

    def copy_from(self, name: str, source: TensorFile) -> None:
        """Write the next declared tensor by copying its bytes from ``source`` (same dtype and shape)."""
        dtype, shape, _ = self._expect(name)
        if source.dtype(name) != dtype or tuple(source.shape(name)) != shape:
            raise ValueError(f"{self.path}: tensor {name!r} in {source.path} does not match its declaration")
        source.copy_bytes(name, self._file)

    def close(self) -> None:
        """Finish the file; raises if declared tensors were never written."""
        self._file.close()
        if self._next != len(self._order):
            missing = [entry[0] for entry in self._order[self._next :]]
            raise ValueError(
                f"{self.path}: {len(missing)} declared tensors never written, first {missing[0]!r}"
            )

    def __enter__(self) -> StreamingSafetensorsWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self._file.close()


def refuse_overlap(out: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str]], flag: str) -> None:
    """Raise :class:`MergeInputError` if ``out`` is, contains or lies inside any of ``inputs``.

    Writing (with overwrite) into an input's directory, or one above it, would replace that input.
    """
    target = Path(out).resolve()
    for source in inputs:
        source = Path(source).resolve()
        if target == source or source in target.parents or target in source.parents:
            raise MergeInputError(
                f"{flag} {target} overlaps the input {source}; expected a directory outside every input"
            )


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def hidden_work_dir(path: Path, kind: str) -> Path:
    """A new hidden sibling of ``path`` (``.<name>.<kind>-<pid>-<random>``) with the umask's permissions.

    The pid in the name lets :func:`remove_stale_work` tell a dead process's leftovers from live work;
    ``mkdtemp`` creates 0700, which would stay the mode of the final directory once it is renamed in.
    """
    work = Path(tempfile.mkdtemp(prefix=f".{path.name}.{kind}-{os.getpid()}-", dir=path.parent))
    work.chmod(0o777 & ~current_umask())
    return work


def current_umask() -> int:
    """The process's umask (read by setting it and setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_stale_work(path: Path) -> None:
    """Delete hidden siblings of ``path`` left by merges whose process died (SIGTERM, SIGKILL, OOM)."""
    for entry in path.parent.glob(f".{glob.escape(path.name)}.*-*-*"):
        pid = entry.name[len(path.name) + 2 :].split("-")[1]
        if entry.is_dir() and pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)


class AtomicDirectory:
    """Build a directory in a hidden sibling and rename it into place on :meth:`commit`.

    Used as a context manager: leaving the block without committing (an exception) deletes the work, so a
    failed merge never leaves a directory that looks complete; work left by a killed process is deleted by
    the next one writing the same path.
    """

    def __init__(self, path: str | os.PathLike[str], overwrite: bool = False) -> None:
        """Prepare to write ``path``; it must not exist unless ``overwrite``."""
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"{self.path}: already exists (pass overwrite to replace it)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_work(self.path)
        self.work = hidden_work_dir(self.path, "partial")
        self.committed = False

    def file(self, relative: str) -> Path:
        """Path of ``relative`` inside the work directory (parents created)."""
        target = self.work / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def write_json(self, relative: str, data: Any) -> Path:
        """Write ``data`` as indented JSON to ``relative``."""
        target = self.file(relative)
        target.write_text(json.dumps(data, indent=1, sort_keys=True))
        return target

    def commit(self) -> Path:
        """Move the finished directory into place (replacing an old one) and return its path."""
        if self.path.exists():
            trash = hidden_work_dir(self.path, "old")
            os.replace(self.path, trash / "old")
            os.replace(self.work, self.path)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(self.work, self.path)
        self.committed = True
        return self.path

    def __enter__(self) -> AtomicDirectory:
        return self

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        if not self.committed:
            shutil.rmtree(self.work, ignore_errors=True)
