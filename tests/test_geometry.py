"""Update geometry (issue 17.3): small matrices whose update lies in a known subspace."""

from __future__ import annotations

import pytest
import torch

from perl_cli.tracking import geometry, spectral


def base_with_spectrum(m: int, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """W = U diag(σ) Vᵀ with distinct, known singular values (descending)."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    s = torch.linspace(10.0, 0.5, min(m, n), dtype=torch.float64)
    w = u[:, : len(s)] @ torch.diag(s) @ v[:, : len(s)].T
    return w.float(), u, s, v


@pytest.mark.parametrize(("m", "n"), [(48, 32), (32, 48)])
def test_base_subspaces_match_a_dense_svd(m: int, n: int) -> None:
    w, u, s, v = base_with_spectrum(m, n)
    sub = geometry.subspaces(w, 4)
    d = min(m, n)
    for found, true in ((sub.top_left, u[:, :4]), (sub.top_right, v[:, :4]),
                        (sub.bottom_left, u[:, d - 4 : d]), (sub.bottom_right, v[:, d - 4 : d])):
        cos = torch.linalg.svdvals(found.double().T @ true)
        assert cos.min() > 0.999  # the same subspace


def test_an_update_inside_the_principal_subspace_and_one_inside_the_minor() -> None:
    m, n, k = 64, 40, 4
    w, u, s, v = base_with_spectrum(m, n, seed=1)
    base = geometry.subspaces(w, k)
    g = torch.Generator().manual_seed(2)
    core = torch.randn(k, k, generator=g, dtype=torch.float64)
    top = geometry.measure((u[:, :k] @ core).float(), v[:, :k].T.float(), base)  # ΔW = U_k C V_kᵀ
    assert top["top"]["cos2_left"] == pytest.approx(1, abs=1e-4) and top["top"]["cos2_right"] == pytest.approx(1, abs=1e-4)
    assert top["top"]["energy_left"] == pytest.approx(1, abs=1e-4) and top["top"]["energy_right"] == pytest.approx(1, abs=1e-4)
    assert top["bottom"]["energy_left"] == pytest.approx(0, abs=1e-4) and top["bottom"]["cos2_right"] == pytest.approx(0, abs=1e-4)
    d = min(m, n)
    minor = geometry.measure((u[:, d - k : d] @ core).float(), v[:, d - k : d].T.float(), base)
    assert minor["bottom"]["energy_left"] == pytest.approx(1, abs=1e-4) and minor["top"]["energy_right"] == pytest.approx(0, abs=1e-4)
    assert minor["bottom"]["max_angle_left_deg"] < 1.0 and minor["top"]["max_angle_left_deg"] > 89.0


def test_a_one_sided_update_and_a_random_one() -> None:
    m, n, k = 64, 40, 4
    w, u, s, v = base_with_spectrum(m, n, seed=3)
    base = geometry.subspaces(w, k)
    g = torch.Generator().manual_seed(4)
    # Left in the principal subspace, right anywhere: like PiSSA's B moving on top of A₀.
    half = geometry.measure((u[:, :k] @ torch.randn(k, k, generator=g, dtype=torch.float64)).float(),
                            torch.randn(k, n, generator=g), base)
    assert half["top"]["energy_left"] == pytest.approx(1, abs=1e-4) and half["top"]["energy_right"] < 0.5
    shares = [geometry.measure(torch.randn(m, k, generator=g), torch.randn(k, n, generator=g), base)["top"]["energy_left"]
              for _ in range(40)]
    assert sum(shares) / len(shares) == pytest.approx(k / m, rel=0.35)  # chance: k of m directions


def test_measure_shares_the_spectral_factorisation_and_handles_a_zero_update() -> None:
    w, u, s, v = base_with_spectrum(32, 24, seed=5)
    base = geometry.subspaces(w, 3)
    left, right = torch.randn(32, 3), torch.randn(3, 24)
    svd = spectral.factored_svd(left, right)
    assert torch.allclose(svd[5].float(), spectral.singular_values(left, right), atol=1e-5)
    assert geometry.measure(left, right, base, svd) == geometry.measure(left, right, base)
    zero = geometry.measure(torch.zeros(32, 3), torch.randn(3, 24), base)
    assert zero["top"] is None and zero["rank"] == 0


def test_snapshot_records_geometry_for_a_lora_model() -> None:
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(24, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16))
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["0", "2"], init_lora_weights=True))
    for name, p in wrapped.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p)  # a trained-looking update
    base = geometry.BaseSubspaces.of(wrapped)
    assert len(base.layers) == 2 and all(s.k == 2 for s in base.layers.values())
    layers = spectral.snapshot(wrapped, None, base)
    assert all("geometry" in layer and layer["geometry"]["top"] is not None for layer in layers.values())
    plain = spectral.snapshot(wrapped)
    assert all("geometry" not in layer for layer in plain.values())
    assert all(plain[k]["singular_values"] == pytest.approx(layers[k]["singular_values"], rel=1e-5) for k in plain)


def test_rounding_noise_is_no_update() -> None:
    """PiSSA's BA − B₀A₀ at step 0 is float rounding of the base's top block: not an update to place."""
    w, u, s, v = base_with_spectrum(32, 24, seed=6)
    base = geometry.subspaces(w, 3)
    assert base.scale == pytest.approx(10.0, rel=1e-4)
    noise = geometry.measure((u[:, :3] * 1e-7).float(), v[:, :3].T.float(), base)
    assert noise["rank"] == 0 and noise["top"] is None
    real = geometry.measure((u[:, :3] * 1e-2).float(), v[:, :3].T.float(), base)
    assert real["top"]["energy_left"] == pytest.approx(1, abs=1e-4)
