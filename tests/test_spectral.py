"""Spectral math on constructed matrices: noise, planted rank-k signal, orthogonal, degenerate shapes."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spear_mm.scoring.spectral import (
    SNR_FLOOR,
    analyze_matrix,
    effective_rank,
    mp_sqrt_quartiles,
    noise_edge,
    singular_values,
    snr,
    spectrum_stats,
    top_k_mass,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rank_k_plus_noise(m: int, n: int, k: int, strength: float = 8.0, seed: int = 0) -> torch.Tensor:
    g = _gen(seed)
    noise = torch.randn(m, n, generator=g, dtype=torch.float64)
    u, _ = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))
    spikes = strength * (math.sqrt(m) + math.sqrt(n)) * torch.linspace(1.0, 2.0, k, dtype=torch.float64)
    return noise + (u * spikes) @ v.T


@pytest.mark.parametrize("shape", [(300, 200), (1200, 100), (256, 256), (64, 512)])
def test_pure_noise_has_few_or_no_signal_values(shape):
    _, stats = analyze_matrix(torch.randn(*shape, generator=_gen(1)))
    assert stats.signal_count <= 2  # the top noise value fluctuates around the edge (Tracy–Widom)
    assert stats.snr < 0.05
    m, n = shape
    assert stats.noise_scale == pytest.approx(1.0, rel=0.05)  # the entries' std
    assert stats.edge == pytest.approx(math.sqrt(m) + math.sqrt(n), rel=0.05)


def test_spectrum_edge_is_spectrums_formula_and_sits_inside_the_bulk():
    w = torch.randn(300, 200, generator=_gen(1), dtype=torch.float64)
    sigma = torch.linalg.svdvals(w)
    q = torch.quantile(sigma, torch.tensor([0.25, 0.75], dtype=torch.float64))
    s, tau = noise_edge(sigma, (300, 200), "spectrum")
    assert s == pytest.approx(float(q[1] - q[0]) / 1.349)
    assert tau == pytest.approx(s * (1 + math.sqrt(200 / 300)))
    assert analyze_matrix(w, edge="spectrum")[1].signal_count > 50


def test_mp_quartiles_match_a_large_noise_sample():
    x = torch.randn(4000, 1000, generator=_gen(4), dtype=torch.float64)
    q = torch.quantile(torch.linalg.svdvals(x) / math.sqrt(4000), torch.tensor([0.25, 0.75], dtype=torch.float64))
    assert mp_sqrt_quartiles(0.25) == pytest.approx((float(q[0]), float(q[1])), rel=2e-3)


@pytest.mark.parametrize("k", [1, 3, 8])
def test_rank_k_plus_noise_puts_k_values_above_the_edge_of_a_tall_matrix(k):
    w = _rank_k_plus_noise(1200, 100, k)
    sigma, stats = analyze_matrix(w)
    assert stats.signal_count == k
    assert sigma[k - 1] > stats.edge > sigma[k]


def test_planted_signal_raises_snr_and_lowers_effective_rank():
    noise = torch.randn(400, 300, generator=_gen(2), dtype=torch.float64)
    _, a = analyze_matrix(noise)
    _, b = analyze_matrix(_rank_k_plus_noise(400, 300, 4, seed=2))
    assert b.snr > a.snr
    assert b.effective_rank < a.effective_rank
    assert b.top_mass > a.top_mass


def test_orthogonal_matrix_has_flat_spectrum():
    q, _ = torch.linalg.qr(torch.randn(128, 128, generator=_gen(3), dtype=torch.float64))
    sigma, stats = analyze_matrix(q, precision="float64")
    assert torch.allclose(sigma, torch.ones(128, dtype=torch.float64), atol=1e-6)
    assert stats.noise_scale == pytest.approx(0.0, abs=1e-6)
    assert stats.effective_rank == pytest.approx(128, rel=1e-6)
    assert math.isfinite(stats.snr) and stats.snr >= 0


@pytest.mark.parametrize(
    "w",
    [
        torch.zeros(16, 8),
        torch.full((16, 8), 0.25),
        torch.ones(1, 32),
        torch.randn(1, 1),
        torch.randn(2, 3),
        torch.zeros(5),
        torch.eye(4) * 1e-30,
    ],
    ids=["zeros", "constant", "1xN", "1x1", "2x3", "vector", "tiny"],
)
def test_degenerate_matrices_give_finite_numbers(w):
    _, stats = analyze_matrix(w)
    for key, value in stats.as_dict().items():
        if isinstance(value, float):
            assert math.isfinite(value), key
    assert 0 <= stats.snr <= (1 + 1e-9) / SNR_FLOOR


def test_all_zero_and_rank_one_conventions():
    assert analyze_matrix(torch.zeros(8, 8))[1].snr == 0.0
    assert analyze_matrix(torch.zeros(8, 8))[1].effective_rank == 0.0
    const = analyze_matrix(torch.full((8, 6), 3.0))[1]
    assert const.signal_count == 1 and const.snr == pytest.approx(1 / SNR_FLOOR)


def test_snr_normalize_max_divides_by_sigma_1():
    w = _rank_k_plus_noise(200, 100, 2)
    sigma, _ = singular_values(w, precision="float64")
    shape = (200, 100)
    assert snr(sigma, shape, "max") == pytest.approx(snr(sigma, shape) / float(sigma[0]))


def test_formulas_on_a_hand_spectrum():
    sigma = torch.tensor([10.0, 4.0, 3.0, 2.0, 1.0], dtype=torch.float64)
    s, tau = noise_edge(sigma, (5, 20), "spectrum")
    assert s == pytest.approx((4.0 - 2.0) / 1.349)
    assert tau == pytest.approx(s * 1.5) and tau < 3.0
    assert snr(sigma, (5, 20), edge="spectrum") == pytest.approx(17.0 / 3.0)
    assert top_k_mass(sigma, 1) == pytest.approx(0.5)
    p = sigma / 20.0
    assert effective_rank(sigma) == pytest.approx(float(torch.exp(-(p * p.log()).sum())))
    assert spectrum_stats(sigma, (5, 20), edge="spectrum").signal_count == 3


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    m=st.integers(1, 48),
    n=st.integers(1, 48),
    spread=st.floats(0.0, 3.0),
    seed=st.integers(0, 2**16),
)
def test_gram_singular_values_match_svdvals(m, n, spread, seed):
    g = _gen(seed)
    w = torch.randn(m, n, generator=g, dtype=torch.float64) * torch.logspace(0, -spread, n, dtype=torch.float64)
    ref = torch.linalg.svdvals(w)
    ref = torch.where(ref > max(m, n) * torch.finfo(torch.float32).eps * ref[0], ref, 0.0)  # numerical zeros
    for precision in ("float64", "auto"):
        sigma, used = singular_values(w, precision=precision)
        tol = 1e-6 if used == "float64" else 2e-3
        assert torch.allclose(sigma, ref, rtol=0, atol=tol * float(ref[0]) + 1e-12), (precision, used)
    for edge in ("mp", "spectrum"):
        s64 = spectrum_stats(singular_values(w, precision="float64")[0], (m, n), edge=edge)
        s_ref = spectrum_stats(singular_values(w, method="svd")[0], (m, n), edge=edge)
        assert s64.effective_rank == pytest.approx(s_ref.effective_rank, rel=1e-5)
        if abs(s64.signal_count - s_ref.signal_count) == 0:  # a value sitting on τ may flip (a jump, not an error)
            assert s64.snr == pytest.approx(s_ref.snr, rel=1e-4, abs=1e-9)


def test_auto_precision_agrees_with_svdvals_on_bf16_weights():
    g = _gen(5)
    for cols in (torch.ones(256, dtype=torch.float64), torch.logspace(0, -3, 256, dtype=torch.float64)):
        w = (torch.randn(512, 256, generator=g, dtype=torch.float64) * cols).to(torch.bfloat16)
        _, auto = analyze_matrix(w)
        _, ref = analyze_matrix(w, method="svd")
        assert auto.snr == pytest.approx(ref.snr, rel=1e-4)
        assert auto.effective_rank == pytest.approx(ref.effective_rank, rel=1e-4)
    assert auto.precision == "float64"  # the wide spectrum needed the float64 fallback
