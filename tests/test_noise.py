import math

import pytest
import torch

from vitscope.analyses.noise import band_limited, band_limited_noise, band_mask


@pytest.mark.parametrize("h", [28, 32])
@pytest.mark.parametrize("f", [0.1, 0.3, 0.5, 0.9])
def test_noise_energy_lies_only_inside_its_band(h, f):
    s = 0.05 * math.pi
    noise = band_limited_noise(
        (64, 3, h, h), f * math.pi, s, eps=0.7, generator=torch.Generator().manual_seed(0)
    )
    mask = band_mask(h, h, f * math.pi, s)
    spec = torch.roll(torch.fft.fft2(noise.double()).abs() ** 2, (h // 2, h // 2), (-2, -1)).sum(
        (0, 1)
    )
    inside, outside = (spec * mask).sum(), (spec * (1 - mask)).sum()
    assert mask.sum() > 0
    assert outside / inside < 1e-10  # float32 rounding only
    assert noise.dtype == torch.float32


def test_mask_is_a_symmetric_linf_annulus_at_the_right_radii():
    h = 32
    # f = 0.5π, s = 0.1π: radii int(0.4*16) = 6 (inner) and int(0.6*16) = 9 (outer)
    m = band_mask(h, h, 0.5 * math.pi, 0.1 * math.pi)
    k = (torch.arange(h) - h // 2).abs()
    rho = torch.maximum(k[:, None], k[None, :])
    assert torch.equal(m.bool(), (rho >= 6) & (rho < 9))
    c = h // 2
    for a in range(-c + 1, c):
        for b in range(-c + 1, c):
            assert m[c + a, c + b] == m[c - a, c - b]  # conjugate-symmetric about DC
    # the full band keeps everything but the Nyquist row/column: filtering changes ~nothing there
    x = torch.randn(2, 1, h, h)
    full = band_limited(x, band_mask(h, h, 0.5 * math.pi, 0.5 * math.pi + 1e-9))
    assert (full - x).pow(2).sum() < 0.1 * x.pow(2).sum()


def test_same_seed_same_noise():
    a = band_limited_noise(
        (2, 1, 16, 16), 1.0, 0.2, 0.1, generator=torch.Generator().manual_seed(3)
    )
    b = band_limited_noise(
        (2, 1, 16, 16), 1.0, 0.2, 0.1, generator=torch.Generator().manual_seed(3)
    )
    assert torch.equal(a, b)
