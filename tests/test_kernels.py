"""Merge kernels: SLERP/LERP properties (hypothesis), bit-exact end points, degenerate pairs, baselines."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from spear_mm.merging.functional import lerp, slerp, slerp_coefficients, task_arithmetic, ties
from spear_mm.merging.kernels import CHUNK, LERP_THRESHOLD, pair_stats

settings.register_profile("spear", max_examples=40, deadline=None)
settings.load_profile("spear")

seeds = st.integers(0, 2**31 - 1)
ts = st.floats(0.0, 1.0)
inner_ts = st.floats(0.01, 0.99)
sizes = st.integers(2, 300)
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _pair(seed: int, n: int, scale_b: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two random vectors (independent Gaussians)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, generator=g, dtype=torch.float64)
    b = torch.randn(n, generator=g, dtype=torch.float64)
    return a.float(), (b * scale_b).float()


def _slerp_regime(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Clearly inside the SLERP regime (|cos| < 0.99), away from the LERP fallback."""
    return abs(math.cos(_angle(a, b))) < 0.99


def _angle(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.double().reshape(-1), y.double().reshape(-1)
    return math.acos(max(-1.0, min(1.0, float(x @ y / (x.norm() * y.norm())))))


def _bits(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous().view(torch.int16 if x.element_size() == 2 else torch.int32)


@given(seed=seeds, n=sizes, dtype=st.sampled_from(DTYPES))
def test_t0_and_t1_reproduce_inputs_bit_for_bit(seed, n, dtype):
    a, b = (x.to(dtype) for x in _pair(seed, n))
    for kernel in (slerp, lerp, task_arithmetic):
        assert torch.equal(_bits(kernel(a, b, 0.0)), _bits(a)), kernel.__name__
        assert torch.equal(_bits(kernel(a, b, 1.0)), _bits(b)), kernel.__name__
        assert kernel(a, b, 0.5).dtype == dtype


@given(seed=seeds, n=sizes, t=ts)
def test_slerp_is_symmetric(seed, n, t):
    a, b = _pair(seed, n)
    torch.testing.assert_close(slerp(a, b, t), slerp(b, a, 1.0 - t), rtol=1e-4, atol=1e-5)


@given(seed=seeds, n=sizes, t=inner_ts)
def test_slerp_of_unit_vectors_stays_on_the_sphere_at_angle_t_theta(seed, n, t):
    a, b = _pair(seed, n)
    assume(_slerp_regime(a, b))
    a, b = a / a.norm(), b / b.norm()
    out = slerp(a, b, t)
    assert float(out.norm()) == pytest.approx(1.0, abs=1e-4)
    theta = _angle(a, b)
    assert _angle(out, a) == pytest.approx(t * theta, abs=1e-3)
    assert _angle(out, b) == pytest.approx((1 - t) * theta, abs=1e-3)


@given(seed=seeds, n=sizes, t=inner_ts, r=st.floats(0.1, 10.0))
def test_slerp_of_equal_norm_tensors_keeps_the_norm(seed, n, t, r):
    a, b = _pair(seed, n)
    assume(_slerp_regime(a, b))
    a, b = a * (r / a.norm()), b * (r / b.norm())
    assert float(slerp(a, b, t).norm()) == pytest.approx(r, rel=1e-4)


@given(seed=seeds, n=sizes, scale=st.floats(0.2, 5.0))
def test_angle_to_the_adapted_tensor_grows_monotonically_with_t(seed, n, scale):
    a, b = _pair(seed, n, scale_b=scale)
    assume(_slerp_regime(a, b))
    angles = [_angle(slerp(a, b, t), a) for t in torch.linspace(0, 1, 11).tolist()]
    assert angles[0] == pytest.approx(0.0, abs=1e-3)
    assert angles[-1] == pytest.approx(_angle(a, b), abs=1e-3)
    assert all(y >= x - 1e-4 for x, y in zip(angles, angles[1:], strict=False))


def test_slerp_matches_the_textbook_formula_on_unnormalised_tensors():
    a, b = _pair(3, 1000, scale_b=2.5)
    t = 0.3
    theta = _angle(a, b)
    ref = (math.sin((1 - t) * theta) * a.double() + math.sin(t * theta) * b.double()) / math.sin(theta)
    torch.testing.assert_close(slerp(a, b, t).double(), ref, rtol=1e-5, atol=1e-6)


@given(t=inner_ts, n=sizes)
def test_zero_tensors_fall_back_to_lerp(t, n):
    b = torch.randn(n)
    z = torch.zeros(n)
    assert slerp_coefficients(pair_stats(z, b), t)[2]
    torch.testing.assert_close(slerp(z, b, t), t * b)
    torch.testing.assert_close(slerp(b, z, t), (1 - t) * b)
    assert torch.equal(slerp(z, z, t), z)


@given(t=inner_ts, seed=seeds)
def test_antipodal_tensors_fall_back_to_lerp_and_stay_finite(t, seed):
    a = torch.randn(64, generator=torch.Generator().manual_seed(seed))
    ca, cb, fallback = slerp_coefficients(pair_stats(a, -a), t)
    assert fallback and (ca, cb) == pytest.approx((1 - t, t))
    out = slerp(a, -a, t)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, (1 - 2 * t) * a, rtol=1e-5, atol=1e-6)


def test_nearly_parallel_tensors_use_lerp_and_report_it():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4096, generator=g)
    b = a + 0.01 * torch.randn(4096, generator=g)  # cos ≈ 0.99995
    stats = pair_stats(a, b)
    assert stats.cos > LERP_THRESHOLD
    ca, cb, fallback = slerp_coefficients(stats, 0.4)
    assert fallback and (ca, cb) == pytest.approx((0.6, 0.4))
    torch.testing.assert_close(slerp(a, b, 0.4), lerp(a, b, 0.4))
    # just below the threshold SLERP is used, and differs from LERP by far less than 1e-3 relative
    c = a + 0.035 * torch.randn(4096, generator=g)
    stats = pair_stats(a, c)
    assert 0.999 < stats.cos < LERP_THRESHOLD and not slerp_coefficients(stats, 0.4)[2]
    assert float((slerp(a, c, 0.4) - lerp(a, c, 0.4)).norm() / lerp(a, c, 0.4).norm()) < 1e-3


@pytest.mark.parametrize("dtype", DTYPES)
def test_low_precision_inputs_are_computed_in_float32(dtype):
    a, b = _pair(7, 2048)
    out = slerp(a.to(dtype), b.to(dtype), 0.5)
    ref = slerp(a.to(dtype).float(), b.to(dtype).float(), 0.5).to(dtype)
    assert out.dtype == dtype and torch.equal(_bits(out), _bits(ref))
    assert slerp(a.to(dtype), b.to(dtype), 0.5, out_dtype=torch.float32).dtype == torch.float32


def test_pair_stats_are_accurate_over_several_chunks():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(CHUNK + 12345, generator=g)
    b = 0.5 * a + torch.randn(CHUNK + 12345, generator=g)
    s = pair_stats(a, b)
    a64, b64 = a.double(), b.double()
    assert s.dot == pytest.approx(float(a64 @ b64), rel=1e-5)
    assert s.aa == pytest.approx(float(a64 @ a64), rel=1e-5)
    assert s.cos == pytest.approx(float(a64 @ b64 / (a64.norm() * b64.norm())), abs=1e-6)
    assert s.rel_change == pytest.approx(float((a64 - b64).norm() / b64.norm()), rel=1e-5)


def test_task_arithmetic_and_ties():
    a, b = _pair(11, 1000)
    torch.testing.assert_close(task_arithmetic(a, b, 0.3), b + 0.7 * (a - b))
    torch.testing.assert_close(ties(a, b, 0.3, density=1.0), b + 0.7 * (a - b))
    trimmed = ties(a, b, 0.0, density=0.25)
    kept = (trimmed - b).abs() > 0
    assert int(kept.sum()) == 250  # the top quarter of |Δ| survives, the rest is reset to the base
    delta = (a - b).abs()
    assert float(delta[kept].min()) >= float(delta[~kept].max())
    assert torch.equal(ties(a, b, 1.0, density=0.25), b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_kernels_never_modify_their_inputs(dtype):
    a, b = (x.to(dtype) for x in _pair(5, 512))
    a0, b0 = a.clone(), b.clone()
    for out in (slerp(a, b, 0.3), lerp(a, b, 0.3), task_arithmetic(a, b, 0.3), ties(a, b, 0.3, density=0.5)):
        assert out.shape == a.shape
    assert torch.equal(a, a0) and torch.equal(b, b0)
