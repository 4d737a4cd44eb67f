import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vitscope.analyses.fourier import EPS, delta_log_amplitude, frequency_axis, log_amplitude
from vitscope.analyses.variance import featuremap_variance


def test_constant_map_puts_all_energy_at_dc():
    h = 16
    x = torch.full((2, 3, h, h), 2.5)
    d = delta_log_amplitude(x)
    assert d.shape == (h // 2,)
    assert d[0] == 0
    floor = math.log(EPS) - math.log(2.5 * h * h)  # |F| = 0 off DC, c*h*w at DC
    assert torch.allclose(d[1:], torch.full((h // 2 - 1,), floor, dtype=d.dtype), atol=1e-4)


@pytest.mark.parametrize("h, k0", [(16, 3), (16, 7), (15, 5), (28, 9)])
def test_single_diagonal_sinusoid_peaks_at_its_frequency(h, k0):
    i = torch.arange(h, dtype=torch.float64)
    wave = torch.cos(2 * math.pi * k0 * (i[:, None] + i[None, :]) / h)
    d = delta_log_amplitude(wave.expand(2, 3, h, h))
    assert int(d.argmax()) == k0
    # its amplitude h*w/2 at (k0, k0), the floor elsewhere on the diagonal
    assert d[k0].item() == pytest.approx(math.log(h * h / 2 + EPS) - math.log(EPS), rel=1e-4)


def test_low_pass_filtering_lowers_the_high_frequency_value():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 4, 32, 32, generator=g)
    blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="circular"), 3, stride=1)
    assert delta_log_amplitude(blurred)[-1] < delta_log_amplitude(x)[-1] - 1.0
    # white noise is flat: within the gap between E log|F| of a real (DC) and a complex bin
    assert abs(delta_log_amplitude(x)[-1].item()) < 1.0


def test_log_amplitude_mean_is_taken_after_the_log():
    x = torch.randn(4, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    ref = np.log(np.abs(np.fft.fft2(x.double().numpy())) + EPS)
    ref = np.roll(ref, (4, 4), axis=(2, 3)).mean(axis=(0, 1))
    np.testing.assert_allclose(log_amplitude(x).numpy() / 8, ref, rtol=1e-10)
    assert frequency_axis(5).tolist() == [0, 0.25, 0.5, 0.75, 1.0]


def test_variance_equals_numpy():
    x = torch.randn(5, 7, 6, 6, generator=torch.Generator().manual_seed(2)) * 3 + 1
    a = x.numpy().astype(np.float64)
    ref = a.reshape(5, 7, 36).var(axis=2, ddof=1).mean()
    assert featuremap_variance(x) == pytest.approx(ref, rel=1e-10)
    assert featuremap_variance(torch.ones(2, 3, 4, 4)) == 0.0
