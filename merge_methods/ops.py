"""Steps shared by the merge methods; each is unit-tested on hand-sized tensors.

Every function but one takes and returns tensors and never touches files or global random state: randomness
comes from an explicit ``torch.Generator`` (seed it with :func:`tensor_seed`). Task vectors are float32. The
exception, :func:`global_thresholds`, streams task vectors through the experts' views (two histogram passes)
to find a global top-k cutoff without holding the model in memory.

Tie rules (bf16 checkpoints hit both often, so they are fixed here, once):

- **Top-k cutoff.** Keeping a fraction ``f`` of ``n`` entries targets ``k = floor(f * n)`` entries. The
  threshold is the k-th largest magnitude, and *every* entry whose magnitude is ``>=`` the threshold is kept,
  so equal magnitudes at the cutoff are all kept and the kept count may exceed k. The rule is
  order-independent (no bias toward low or high indices). The official TIES code (``topk_values_mask``) also
  keeps ``>=`` a k-th value, but its k-th value is one rank lower, so it keeps k + 1 when there are no ties;
  MergeKit keeps exactly k by ``argsort`` order. ``k = 0`` keeps nothing; ``f = 1`` keeps everything.
- **Zero sign sum.** The elected sign is ``sign(sum_t tau_t)``; where the sum is exactly 0 the elected sign is
  0, no task agrees with it, and the merged value is 0 (what Task Arithmetic gives there). The official TIES
  code instead gives such entries the majority sign of the whole vector, and MergeKit elects +1; both then
  average only the positive (or majority) entries.
- **Disjoint mean** divides by the number of tasks whose entry is non-zero and agrees with the elected sign;
  an entry no task supports is 0.

The k-th largest magnitude is found by a two-pass radix select over the float32 bit patterns (non-negative
floats order like their integer bit patterns): a 2^15-bin histogram of the high 16 bits picks the bin holding
the k-th value, a 2^16-bin histogram of the low 16 bits inside it gives the exact value. This is O(n), about
5x faster than ``torch.kthvalue`` and 30x faster than a sort on CPU, and it streams, so a global top-k over a
whole model costs two passes of histograms instead of holding the model in memory
(:class:`MagnitudeHistogram`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from tqdm import tqdm

from vlamergebench.merge_methods.io import CheckpointIndex, ExpertView, reads_base
from vlamergebench.policies.checkpoint import LORA_A_SUFFIX, LORA_B_SUFFIX, VLM_FILE

_HIGH_BINS = 1 << 15  # non-negative float32: the sign bit is 0, so the high half-word is < 2^15
_LOW_BINS = 1 << 16


def tensor_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed for a generator, derived from the method seed and names (skill, tensor...).

    Seeding per (seed, skill, tensor) makes a stochastic merge independent of the order tensors are visited
    in.
    """
    digest = hashlib.sha256("/".join([str(seed), *map(str, parts)]).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generator_for(seed: int, *parts: object) -> torch.Generator:
    """A CPU generator seeded by :func:`tensor_seed`."""
    return torch.Generator().manual_seed(tensor_seed(seed, *parts))


def lora_delta(lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float) -> torch.Tensor:
    """Dense task vector ``scale * B @ A`` in float32; A is (rank, in), B is (out, rank)."""
    return (lora_b.float() @ lora_a.float()).mul_(scale)


class MagnitudeHistogram:
    """Exact k-th largest magnitude over one or many tensors, by a two-pass radix select.

    Pass 1: :meth:`add` every magnitude tensor, then :meth:`select` with k. Pass 2 (only if
    :attr:`needs_second_pass`): :meth:`add` the same tensors again. Then :attr:`threshold` is the k-th
    largest value.
    """

    def __init__(self) -> None:
        self.high = torch.zeros(_HIGH_BINS, dtype=torch.int64)
        self.low: torch.Tensor | None = None
        self.bin: int | None = None
        self.rank_in_bin = 0
        self.result: float | None = None
        self.count = 0

    @property
    def needs_second_pass(self) -> bool:
        """Whether :meth:`select` chose a bin that must be refined by a second pass."""
        return self.bin is not None and self.result is None

    def add(self, magnitudes: torch.Tensor) -> None:
        """Count non-negative float32 magnitudes (any shape) in the current pass."""
        bits = magnitudes.detach().float().reshape(-1).view(torch.int32)
        high = bits >> 16
        if self.bin is None:
            self.high += torch.bincount(high, minlength=_HIGH_BINS)
            self.count += bits.numel()
        else:
            self.low += torch.bincount(bits[high == self.bin] & 0xFFFF, minlength=_LOW_BINS)

    def select(self, k: int) -> None:
        """Fix k (1 = the largest) after pass 1."""
        if k <= 0:
            self.result = float("inf")
            return
        if k > self.count:
            self.result = 0.0
            return
        from_top = torch.flip(self.high, [0]).cumsum(0)
        position = int(torch.searchsorted(from_top, torch.tensor(k)))  # first index with cumulative >= k
        self.bin = _HIGH_BINS - 1 - position
        self.rank_in_bin = k - (int(from_top[position - 1]) if position else 0)
        self.low = torch.zeros(_LOW_BINS, dtype=torch.int64)

    @property
    def threshold(self) -> float:
        """The k-th largest magnitude (``inf`` for k = 0, 0 for k > count)."""
        if self.result is None:
            if self.low is None:
                raise RuntimeError("MagnitudeHistogram: call select(k) (and the second pass) first")
            from_top = torch.flip(self.low, [0]).cumsum(0)
            position = int(torch.searchsorted(from_top, torch.tensor(self.rank_in_bin)))
            bits = (int(self.bin) << 16) | (_LOW_BINS - 1 - position)
            self.result = float(torch.tensor(bits, dtype=torch.int32).view(torch.float32))
        return self.result


def keep_count(numel: int, keep_fraction: float) -> int:
    """Entries a top-k trim targets: ``floor(keep_fraction * numel)``."""
    if not 0.0 <= keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in [0, 1], got {keep_fraction}")
    return int(keep_fraction * numel)


def kth_largest_magnitude(tensor: torch.Tensor, k: int) -> float:
    """The k-th largest ``|tensor|`` (1 = the largest), by radix select."""
    return _kth_largest(tensor.detach().float().abs(), k)


def _kth_largest(magnitudes: torch.Tensor, k: int) -> float:
    """:class:`MagnitudeHistogram`'s two passes on one tensor, sharing the high half-words between them."""
    histogram = MagnitudeHistogram()
    bits = magnitudes.reshape(-1).view(torch.int32)
    high = bits >> 16
    histogram.high += torch.bincount(high, minlength=_HIGH_BINS)
    histogram.count = bits.numel()
    histogram.select(k)
    if histogram.needs_second_pass:
        histogram.low += torch.bincount(bits[high == histogram.bin] & 0xFFFF, minlength=_LOW_BINS)
    return histogram.threshold


def stream_threshold(magnitudes: Callable[[], Iterable[torch.Tensor]], keep_fraction: float) -> float:
    """A global top-k cutoff over tensors streamed one at a time: the k-th largest of all they hold.

    ``magnitudes()`` yields the magnitude tensors; it is called once, or twice when the radix select needs
    its second pass. k = ``floor(keep_fraction * count)``.
    """
    histogram = MagnitudeHistogram()
    for tensor in magnitudes():
        histogram.add(tensor)
    histogram.select(keep_count(histogram.count, keep_fraction))
    if histogram.needs_second_pass:
        for tensor in magnitudes():
            histogram.add(tensor)
    return histogram.threshold


def trim_below(tensor: torch.Tensor, threshold: float) -> torch.Tensor:
    """Zero every entry with ``|x| < threshold`` (ties at the threshold are kept)."""
    if threshold <= 0.0:
        return tensor
    return tensor * (tensor.abs() >= threshold)


def trim_to_top_fraction(tensor: torch.Tensor, keep_fraction: float) -> torch.Tensor:
    """Per-tensor magnitude trim: keep the top ``keep_fraction`` of entries (ties as the module says)."""
    k = keep_count(tensor.numel(), keep_fraction)  # validates the fraction
    if keep_fraction == 1.0:
        return tensor
    magnitudes = tensor.detach().float().abs()  # computed once: for the threshold and for the mask
    threshold = _kth_largest(magnitudes, k)
    return tensor if threshold <= 0.0 else tensor * (magnitudes >= threshold)


def elect_sign(stacked: torch.Tensor) -> torch.Tensor:
    """TIES "mass" sign election over dim 0: ``sign(sum_t tau_t)`` as int8, 0 where the sum is exactly 0."""
    return torch.sign(stacked.float().sum(dim=0)).to(torch.int8)


def disjoint_merge(stacked: torch.Tensor, elected: torch.Tensor, reduce: str = "mean") -> torch.Tensor:
    """Mean or sum (``reduce``) over dim 0 of the non-zero entries that agree with ``elected``."""
    if reduce not in ("mean", "sum"):
        raise ValueError(f"disjoint merge reduce must be 'mean' or 'sum', got {reduce!r}")
    sign = elected.to(stacked.dtype)
    total = torch.zeros(stacked.shape[1:], dtype=stacked.dtype)
    count = torch.zeros_like(total) if reduce == "mean" else None
    for task in stacked:  # one task at a time: no (T, ...) temporaries, each op on contiguous memory
        agree = ((task * sign) > 0).to(task.dtype)  # non-zero and of the elected sign (0 elects nothing)
        total.addcmul_(task, agree)
        if count is not None:
            count.add_(agree)
    return total if count is None else total.div_(count.clamp_(min=1))


def drop_and_rescale(tensor: torch.Tensor, drop_fraction: float, generator: torch.Generator) -> torch.Tensor:
    """DARE: drop each entry with probability ``drop_fraction`` and rescale survivors by ``1 / (1 - p)``."""
    if not 0.0 <= drop_fraction < 1.0:
        raise ValueError(f"drop_fraction must be in [0, 1), got {drop_fraction}")
    if drop_fraction == 0.0:
        return tensor
    keep = torch.rand(tensor.shape, generator=generator) >= drop_fraction
    return torch.where(keep, tensor, torch.zeros((), dtype=tensor.dtype)) / (1.0 - drop_fraction)


def tall_mask(task_vector: torch.Tensor, merged_vector: torch.Tensor, strength: float) -> torch.Tensor:
    """TALL / MergeVLA task mask ``|tau_m| > strength * |tau_merge - tau_m|`` (strict), as bool."""
    return task_vector.abs() > strength * (merged_vector - task_vector).abs()


_BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)
_BIT_SHIFTS = torch.arange(7, -1, -1, dtype=torch.uint8)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Pack a bool tensor (flattened, row-major) into uint8, 8 entries per byte, first entry in the top bit.

    The layout equals ``numpy.packbits(mask.ravel())``; the result has ``ceil(numel / 8)`` bytes.
    """
    flat = mask.reshape(-1).to(torch.uint8)
    padded = torch.nn.functional.pad(flat, (0, -flat.numel() % 8))
    return (padded.view(-1, 8) * _BIT_WEIGHTS).sum(dim=1, dtype=torch.int32).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """Inverse of :func:`pack_bits` for a mask of ``shape``."""
    numel = 1
    for dim in shape:
        numel *= dim
    if packed.numel() != (numel + 7) // 8:
        raise ValueError(
            f"packed mask has {packed.numel()} bytes, shape {list(shape)} needs {(numel + 7) // 8}"
        )
    bits = (packed.reshape(-1, 1) >> _BIT_SHIFTS) & 1
    return bits.reshape(-1)[:numel].bool().reshape(shape)


def randomized_svd(
    matrix: torch.Tensor,
    rank: int,
    generator: torch.Generator,
    oversample: int = 8,
    power_iterations: int = 4,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``rank`` SVD ``(U (m, r), S (r,), V (n, r))`` of a float32 matrix, by a randomized range finder.

    Same scheme as ``torch.svd_lowrank`` (sketch width ``rank + oversample``, ``power_iterations``
    QR-stabilised power iterations), but the Gaussian sketch comes from ``generator`` instead of the global
    RNG. When the sketch would be as wide as the matrix, an exact SVD is cheaper and is used instead.
    """
    rows, cols = matrix.shape
    rank = min(rank, rows, cols)
    width = rank + oversample
    if width >= min(rows, cols):
        u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
        return u[:, :rank], s[:rank], vh[:rank].T
    sketch = torch.randn(cols, width, generator=generator, dtype=matrix.dtype)
    basis = torch.linalg.qr(matrix @ sketch).Q
    for _ in range(power_iterations):
        basis = torch.linalg.qr(matrix @ torch.linalg.qr(matrix.T @ basis).Q).Q
    u, s, vh = torch.linalg.svd(basis.T @ matrix, full_matrices=False)
    return (basis @ u)[:, :rank], s[:rank], vh[:rank].T


def low_rank_factors(
    matrix: torch.Tensor,
    rank: int,
    generator: torch.Generator,
    oversample: int = 8,
    power_iterations: int = 4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors ``(U sqrt(S) (m, r), V sqrt(S) (n, r))``; their product ``U S V^T`` is the rank-r fit."""
    u, s, v = randomized_svd(matrix, rank, generator, oversample, power_iterations)
    root = s.sqrt()
    return u * root, v * root


def sign_concordant_update(core: torch.Tensor, task_vector: torch.Tensor, rate: float) -> torch.Tensor:
    """CARVE core step: ``(1 - rate) core + rate tau`` where the core is 0 or shares tau's sign, else kept."""
    protected = (core == 0) | (torch.sign(core) == torch.sign(task_vector))
    return torch.where(protected, core * (1.0 - rate) + task_vector * rate, core)


def ties_delta(
    stacked: torch.Tensor, thresholds: Sequence[float] | None, keep_fraction: float, reduce: str
) -> torch.Tensor:
    """TIES on a ``(T, ...)`` task-vector stack: trim (by ``thresholds``, else per tensor), elect, merge."""
    for index in range(stacked.shape[0]):
        if thresholds is not None:
            stacked[index] = trim_below(stacked[index], thresholds[index])
        else:
            stacked[index] = trim_to_top_fraction(stacked[index], keep_fraction)
    return disjoint_merge(stacked, elect_sign(stacked), reduce)


def global_thresholds(
    base: CheckpointIndex,
    views: Sequence[ExpertView],
    targets: Sequence[str],
    keep_fraction: float,
    progress: bool,
) -> list[float]:
    """Per expert, the k-th largest |tau| over all ``targets`` (two streaming histogram passes)."""
    vlm = base.file(VLM_FILE)
    numel = sum(torch.Size(vlm.shape(name)).numel() for name in targets)
    histograms = [MagnitudeHistogram() for _ in views]
    for pass_index in (1, 2):
        if pass_index == 2 and not any(histogram.needs_second_pass for histogram in histograms):
            break
        for name in tqdm(
            targets, desc=f"TIES global top-k, pass {pass_index}", disable=not progress, leave=False
        ):
            weight = vlm.read(name) if reads_base(views) else None
            for view, histogram in zip(views, histograms, strict=True):
                if pass_index == 1 or histogram.needs_second_pass:
                    histogram.add(view.task_vector(name, weight).abs_())
        if pass_index == 1:
            for histogram in histograms:
                histogram.select(keep_count(numel, keep_fraction))
    return [histogram.threshold for histogram in histograms]


def fold_lora(tensors: dict[str, torch.Tensor], factors: Mapping[str, torch.Tensor], scale: float) -> None:
    """In place: ``W <- W + scale * B @ A`` for every ``<module>.lora_A``/``lora_B`` pair, in float32."""
    for name in factors:
        if not name.endswith(LORA_A_SUFFIX):
            continue
        module = name[: -len(LORA_A_SUFFIX)]
        weight = tensors[module + ".weight"]
        delta = (factors[module + LORA_B_SUFFIX].float() @ factors[name].float()).mul_(scale)
        tensors[module + ".weight"] = (weight.float() + delta).to(weight.dtype)
