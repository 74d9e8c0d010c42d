"""Each tensor step of ops.py against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vlamergebench.merge_methods import ops

torch.set_num_threads(1)


def test_lora_delta_is_scaled_b_times_a():
    a = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]])  # (rank 2, in 3)
    b = torch.tensor([[1.0, 1.0], [2.0, 0.0]])  # (out 2, rank 2)
    assert torch.equal(ops.lora_delta(a, b, 2.0), torch.tensor([[2.0, 2.0, 2.0], [4.0, 0.0, 8.0]]))


@pytest.mark.parametrize(
    ("k", "expected"), [(1, 4.0), (2, 3.0), (3, 2.0), (4, 1.0), (5, 1.0), (6, 0.5), (8, 0.0)]
)
def test_kth_largest_magnitude_by_hand(k, expected):
    values = torch.tensor([1.0, -2.0, 3.0, 0.0, -1.0, 4.0, 0.0, 0.5])
    assert ops.kth_largest_magnitude(values, k) == expected


def test_kth_largest_matches_sort_on_random_and_bf16_like_values():
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(5000, generator=generator).to(torch.bfloat16).float()  # many exact ties, as bf16 has
    ordered = values.abs().sort(descending=True).values
    for k in (1, 17, 999, 2500, 4999, 5000):
        assert ops.kth_largest_magnitude(values, k) == float(ordered[k - 1])
    assert ops.kth_largest_magnitude(values, 0) == math.inf


def test_streaming_histogram_equals_one_big_vector():
    generator = torch.Generator().manual_seed(1)
    parts = [torch.randn(n, generator=generator) for n in (10, 300, 7)]
    histogram = ops.MagnitudeHistogram()
    for part in parts:
        histogram.add(part.abs())
    histogram.select(50)
    assert histogram.needs_second_pass
    for part in parts:
        histogram.add(part.abs())
    assert histogram.threshold == float(torch.cat(parts).abs().sort(descending=True).values[49])


def test_stream_threshold_is_the_global_kth_largest():
    generator = torch.Generator().manual_seed(2)
    parts = [torch.randn(shape, generator=generator) for shape in ((4, 5), (30,), (3, 3))]
    calls = []

    def magnitudes():
        calls.append(1)
        return (part.abs() for part in parts)

    flat = torch.cat([part.flatten() for part in parts]).abs().sort(descending=True).values
    assert ops.stream_threshold(magnitudes, 0.25) == float(flat[int(0.25 * 59) - 1])  # k = 14 of 59
    assert len(calls) == 2  # the radix select's second pass streams the tensors again
    assert ops.stream_threshold(magnitudes, 0.0) == math.inf


def test_trim_keeps_ties_at_the_cutoff():
    values = torch.tensor([1.0, -2.0, 3.0, 0.0, -1.0, 4.0, 0.0, 0.5])
    # keep_fraction 0.5 -> k = 4; the 4th largest magnitude is 1, held by two entries: both are kept (5
    # survive).
    assert torch.equal(
        ops.trim_to_top_fraction(values, 0.5), torch.tensor([1.0, -2.0, 3.0, 0.0, -1.0, 4.0, 0.0, 0.0])
    )
    assert torch.equal(ops.trim_to_top_fraction(values, 1.0), values)
    assert not ops.trim_to_top_fraction(values, 0.1).any()  # k = floor(0.8) = 0 keeps nothing
    with pytest.raises(ValueError, match="keep_fraction"):
        ops.trim_to_top_fraction(values, 1.5)


def test_elect_sign_and_disjoint_merge_by_hand():
    stacked = torch.tensor([[1.0, -2.0, 3.0, 0.0], [-1.0, -1.0, 1.0, 0.0], [0.0, 1.0, -2.0, 0.0]])
    elected = ops.elect_sign(stacked)
    assert elected.tolist() == [0, -1, 1, 0]  # column 0 sums to exactly 0: elected sign 0
    assert ops.disjoint_merge(stacked, elected, "mean").tolist() == [0.0, -1.5, 2.0, 0.0]
    assert ops.disjoint_merge(stacked, elected, "sum").tolist() == [0.0, -3.0, 4.0, 0.0]
    with pytest.raises(ValueError, match="reduce"):
        ops.disjoint_merge(stacked, elected, "median")


def test_drop_and_rescale_keeps_or_rescales_each_entry():
    values = torch.arange(1.0, 10001.0)
    dropped = ops.drop_and_rescale(values, 0.25, ops.generator_for(0, "skill", "w"))
    kept = dropped != 0
    assert torch.allclose(dropped[kept], values[kept] / 0.75)
    assert 0.23 < 1 - kept.float().mean().item() < 0.27  # about a quarter dropped
    again = ops.drop_and_rescale(values, 0.25, ops.generator_for(0, "skill", "w"))
    other = ops.drop_and_rescale(values, 0.25, ops.generator_for(1, "skill", "w"))
    assert torch.equal(dropped, again) and not torch.equal(dropped, other)
    assert torch.equal(ops.drop_and_rescale(values, 0.0, ops.generator_for(0)), values)
    with pytest.raises(ValueError, match="drop_fraction"):
        ops.drop_and_rescale(values, 1.0, ops.generator_for(0))


def test_tall_mask_by_hand():
    tau = torch.tensor([1.0, -2.0, 3.0, 0.0, 0.5])
    merged = torch.tensor([-1.0, -3.0, 4.0, 0.5, 1.5])
    # |tau| > 0.6 |merged - tau|: 1 > 1.2 no; 2 > 0.6 yes; 3 > 0.6 yes; 0 > 0.3 no; 0.5 > 0.6 no
    assert ops.tall_mask(tau, merged, 0.6).tolist() == [False, True, True, False, False]


def test_pack_bits_equals_numpy_and_round_trips():
    generator = torch.Generator().manual_seed(2)
    mask = torch.rand(5, 13, generator=generator) > 0.5
    packed = ops.pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(65 / 8)
    assert packed.tolist() == np.packbits(mask.numpy().ravel()).tolist()
    assert torch.equal(ops.unpack_bits(packed, mask.shape), mask)
    assert ops.pack_bits(torch.tensor([True, False, True])).tolist() == [0b10100000]
    with pytest.raises(ValueError, match="bytes"):
        ops.unpack_bits(packed, (100,))


def _matrix_with_spectrum(rows, cols, spectrum, seed):
    generator = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(rows, len(spectrum), generator=generator)).Q
    v = torch.linalg.qr(torch.randn(cols, len(spectrum), generator=generator)).Q
    return u @ torch.diag(torch.tensor(spectrum)) @ v.T


@pytest.mark.parametrize(("rows", "cols"), [(12, 9), (200, 150)])  # exact SVD path, randomised path
def test_low_rank_error_is_the_tail_of_the_spectrum(rows, cols):
    spectrum = [10.0, 5.0, 2.0, 1.0, 0.5, 0.25, 0.1]
    matrix = _matrix_with_spectrum(rows, cols, spectrum, seed=3)
    u, v = ops.low_rank_factors(matrix, 3, ops.generator_for(0, "t"))
    error = torch.linalg.norm(matrix - u @ v.T).item()
    assert error == pytest.approx(math.sqrt(sum(s * s for s in spectrum[3:])), rel=1e-4)


def test_sign_concordant_update_by_hand():
    core = torch.tensor([1.0, -2.0, 0.0, 3.0, 2.0])
    tau = torch.tensor([-2.0, -1.0, 4.0, 0.0, 4.0])
    # entry 0: signs differ -> kept; 1: same sign -> 0.5*-2 + 0.5*-1; 2: empty core -> 0.5*4;
    # 3: tau 0 has no sign -> kept; 4: same sign -> 0.5*2 + 0.5*4
    assert ops.sign_concordant_update(core, tau, 0.5).tolist() == [1.0, -1.5, 2.0, 3.0, 3.0]


def test_tensor_seed_depends_on_every_part():
    assert ops.tensor_seed(0, "a", "w") == ops.tensor_seed(0, "a", "w")
    assert (
        len({ops.tensor_seed(0, "a", "w"), ops.tensor_seed(1, "a", "w"), ops.tensor_seed(0, "b", "w")}) == 3
    )
