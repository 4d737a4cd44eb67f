"""Shape or texture: the frequency filters of `filtered` and the patch shuffling of `shuffle`
against closed forms, and their analyses on a model."""

import math

import numpy as np
import pytest
import torch

from vitscope.analyses import get_analysis
from vitscope.analyses.base import EvalData
from vitscope.analyses.filtered import high_pass, low_pass, low_pass_mask, radius
from vitscope.analyses.shuffle import permutations, shuffle_patches, usable
from vitscope.errors import ConfigError


def _wave(h, w, ky, kx, phase=0.3):
    i, j = torch.meshgrid(torch.arange(h, dtype=torch.float64),
                          torch.arange(w, dtype=torch.float64), indexing="ij")  # fmt: skip
    return torch.cos(2 * math.pi * (ky * i / h + kx * j / w) + phase)


@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (1, 1, 28, 28), (2, 1, 15, 9)])
@pytest.mark.parametrize("cutoff", [0.0, 0.1, 0.37, 1.0, 2**0.5])
def test_low_and_high_pass_at_one_cutoff_sum_to_the_image(shape, cutoff):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    low, high = low_pass(x, cutoff), high_pass(x, cutoff)
    assert low.shape == high.shape == x.shape and low.dtype == high.dtype == x.dtype
    torch.testing.assert_close(low + high, x, rtol=0, atol=1e-12)
    # the low-pass keeps each channel's mean (DC), the high-pass has none
    torch.testing.assert_close(low.mean((-2, -1)), x.mean((-2, -1)), rtol=0, atol=1e-12)
    assert high.mean((-2, -1)).abs().max() < 1e-12


def test_a_spectrum_below_the_cutoff_passes_unchanged_and_one_above_is_removed():
    # bin (1, 2) of 32 x 32: radius sqrt((2/32)^2 + (4/32)^2) = 0.1398 (units of pi)
    x = 0.5 + _wave(32, 32, 1, 2)
    r = math.hypot(2 / 32, 4 / 32)
    assert radius(32, 32)[1, 2].item() == pytest.approx(r)
    torch.testing.assert_close(low_pass(x, r + 0.01), x, rtol=0, atol=1e-12)
    torch.testing.assert_close(high_pass(x, r + 0.01), torch.zeros_like(x), rtol=0, atol=1e-12)
    torch.testing.assert_close(low_pass(x, r - 0.01), torch.full_like(x, 0.5), rtol=0, atol=1e-12)
    # the full radius keeps everything, cut-off 0 only the mean
    y = torch.rand(3, 20, 24, dtype=torch.float64)
    torch.testing.assert_close(low_pass(y, 2**0.5), y, rtol=0, atol=1e-12)
    torch.testing.assert_close(low_pass(y, 0.0), y.mean((-2, -1), keepdim=True).expand_as(y))


@pytest.mark.parametrize("h, w", [(32, 32), (28, 28), (15, 9), (16, 10)])
def test_masks_are_conjugate_symmetric_so_filtered_images_are_real(h, w):
    for c in (0.05, 0.3, 0.9):
        m = low_pass_mask(h, w, c)
        flipped = m[(-torch.arange(h)) % h][:, (-torch.arange(w)) % w]
        assert torch.equal(m, flipped)
        x = torch.randn(h, w, dtype=torch.float64)
        spectrum = torch.fft.ifft2(torch.fft.fft2(x) * m)
        assert spectrum.imag.abs().max() < 1e-12


def test_float32_images_stay_float32_and_finite():
    x = torch.rand(4, 1, 28, 28)
    for f in (low_pass, high_pass):
        y = f(x, 0.2)
        assert y.dtype == torch.float32 and y.shape == x.shape and torch.isfinite(y).all()


def test_shuffling_with_one_patch_is_the_identity():
    x = torch.rand(3, 2, 8, 8)
    assert torch.equal(shuffle_patches(x, 1, permutations(3, 1, torch.Generator())), x)


def test_a_shuffle_moves_whole_patches_as_stated():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    y = shuffle_patches(x, 2, torch.tensor([[3, 2, 1, 0]]))  # quadrants reversed
    expected = torch.tensor([[10, 11, 8, 9], [14, 15, 12, 13], [2, 3, 0, 1], [6, 7, 4, 5.0]])
    assert torch.equal(y[0, 0], expected)


@pytest.mark.parametrize("g", [2, 4, 7])
def test_each_shuffle_is_a_bijection_of_patches(g):
    x = torch.rand(5, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    order = permutations(5, g, torch.Generator().manual_seed(2))
    assert all(sorted(o.tolist()) == list(range(g * g)) for o in order)
    y = shuffle_patches(x, g, order)
    # the multiset of patches (and so of pixels) is unchanged, and the inverse order undoes it
    assert torch.equal(torch.sort(y.flatten(1)).values, torch.sort(x.flatten(1)).values)
    assert torch.equal(shuffle_patches(y, g, order.argsort(dim=1)), x)
    p = 28 // g
    for i in range(5):
        for j, src in enumerate(order[i].tolist()):
            a, b = divmod(j, g)
            c, d = divmod(src, g)
            assert torch.equal(y[i, :, a * p:(a + 1) * p, b * p:(b + 1) * p],
                               x[i, :, c * p:(c + 1) * p, d * p:(d + 1) * p])  # fmt: skip


def test_shuffling_is_deterministic_for_a_seed():
    def orders(seed):
        return permutations(64, 4, torch.Generator().manual_seed(seed))

    assert torch.equal(orders(0), orders(0)) and not torch.equal(orders(0), orders(1))
    # uniform over orders: each patch lands at each position about equally often
    counts = np.zeros((16, 16))
    for o in permutations(4000, 4, torch.Generator().manual_seed(3)):
        counts[np.arange(16), o.numpy()] += 1
    assert counts.min() > 4000 / 16 * 0.75 and counts.max() < 4000 / 16 * 1.25


def test_grids_that_do_not_divide_the_image_are_skipped_or_refused():
    assert usable((1, 2, 4, 7, 8), 28, 28) == ([1, 2, 4, 7], [8])
    assert usable((1, 2, 4, 7, 8), 32, 32) == ([1, 2, 4, 8], [7])
    with pytest.raises(ConfigError, match="does not divide"):
        shuffle_patches(torch.rand(1, 1, 28, 28), 8, permutations(1, 8, torch.Generator()))
    data = EvalData(torch.zeros(4, 1, 28, 28, dtype=torch.uint8), torch.zeros(4).long(),
                    (0.5,), (0.25,), "z")  # fmt: skip
    cfg = get_analysis("shuffle").config(grids=(3, 5))
    with pytest.raises(ConfigError, match="no grid above 1 divides the 28x28"):
        get_analysis("shuffle").execute(torch.nn.Flatten(), data, cfg)


@pytest.mark.parametrize(
    "name, bad, words",
    [("filtered", {"cutoffs": (0.2, 2.0)}, "radii in"), ("filtered", {"cutoffs": ()}, "radii"),
     ("filtered", {"cutoffs": (0.2, 0.2)}, "twice"), ("shuffle", {"grids": (0, 2)}, ">= 1"),
     ("shuffle", {"grids": (2, 2)}, "twice"), ("shuffle", {"seed": -1}, "seed")],
)  # fmt: skip
def test_bad_settings_are_one_line_errors(name, bad, words):
    with pytest.raises(ConfigError, match=words):
        get_analysis(name).config(**bad)


FMNIST = __import__("pathlib").Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """resnet_tiny (3 epochs on 3% of Fashion-MNIST) and vit_tiny (1 + 5 epochs on 10%: a
    ViT learns slower) trained briefly, then analysed by `vitscope analyze --only
    filtered,shuffle` as a user would."""
    from vitscope.cli import main

    if not (FMNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("needs Fashion-MNIST (make data)")
    root = tmp_path_factory.mktemp("shape")
    out = {}
    budgets = {"resnet_tiny": ("0.03", "3", "32"), "vit_tiny": ("0.1", "5", "64")}
    for model, (fraction, epochs, batch) in budgets.items():
        run = root / model
        assert main(["train", "--model", model, "--fraction", fraction, "--epochs", epochs,
                     "--set", f"train.batch_size={batch}",
                     "--no-progress", "--threads", "1", "--out", str(run)]) == 0  # fmt: skip
        assert main(["analyze", str(run), "--only", "filtered,shuffle", "--threads", "1",
                     "--set", "filtered.num_images=1000",
                     "--set", "shuffle.num_images=1000"]) == 0  # fmt: skip
        out[model] = {n: __import__("vitscope").results.Result.load(run / "results", n)
                      for n in ("filtered", "shuffle")}  # fmt: skip
        out[model]["run"] = run
    return out


def _spearman(a, b):
    ra, rb = (np.argsort(np.argsort(v)) for v in (a, b))
    return float(np.corrcoef(ra, rb)[0, 1])


@pytest.mark.parametrize("model", ["resnet_tiny", "vit_tiny"])
def test_trained_models_lose_accuracy_as_the_cutoff_falls_and_the_grid_grows(trained, model):
    f, s = trained[model]["filtered"].values, trained[model]["shuffle"].values
    clean, chance = f["clean_acc"], f["chance_acc"]
    assert clean > chance + 40, f"{model} trained too little to tell ({clean:.1f}%)"
    half = chance + 0.5 * (clean - chance)  # half of the accuracy above chance
    # low-pass: accuracy rises with the cut-off (falls as it falls), near chance at the lowest
    assert _spearman(f["cutoffs"], f["low_acc"]) > 0.8, f["low_acc"]
    assert f["low_acc"][0] < half and f["low_acc"][-1] > clean - 5, f["low_acc"]
    # high-pass: taking more of the low frequencies away costs accuracy
    assert _spearman(f["cutoffs"], f["high_acc"]) < -0.5, f["high_acc"]
    # shuffling: the finer the grid, the lower the accuracy; g = 1 is the clean accuracy
    assert s["grids"] == [1, 2, 4, 7] and s["skipped"] == [8]
    assert s["accuracy"][0] == pytest.approx(clean) and s["chance_acc"] == chance
    # falls on average: every grid is far below intact and the ranks fall (rho <= -0.8); a
    # ViT with 4 px patch tokens may recover some at g = 7, whose 4 px patches are its tokens
    # moved whole (seen: 67, 28, 17, 26%)
    assert _spearman(s["grids"], s["accuracy"]) <= -0.8 + 1e-9, s["accuracy"]
    assert max(s["accuracy"][1:]) < clean - 10 and np.mean(s["accuracy"][1:]) < half, s["accuracy"]


def _fashion_cue_folder(root, n_per_pair=3):
    """Cue-conflict images made of Fashion-MNIST test images: the silhouette of an image of
    one class filled with the pixels of an image of another (a crude texture swap)."""
    from PIL import Image

    from vitscope.data import load_dataset

    test = load_dataset("fashion-mnist", train=False)
    names = {1: "trouser", 3: "dress", 7: "sneaker", 8: "bag", 9: "ankleboot"}  # class -> name
    first = {k: (test.labels == k).nonzero().flatten()[:n_per_pair].tolist() for k in names}
    written = 0
    for a, shape in names.items():
        for b, texture in names.items():
            for i in range(n_per_pair):
                sil = test.images[first[a][i], 0].numpy() > 30
                fill = test.images[first[b][i], 0].numpy()
                img = np.where(sil, np.maximum(fill, 60), 0).astype(np.uint8)
                (root / shape).mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(root / shape / f"{shape}{i}-{texture}{i}.png")
                written += 1
    return written


def test_cueconflict_runs_from_the_cli_on_a_trained_model(trained, tmp_path, capsys):
    from vitscope.cli import main
    from vitscope.results import Result

    run = trained["resnet_tiny"]["run"]
    n = _fashion_cue_folder(tmp_path / "cue")
    assert main(["analyze", str(run), "--only", "cueconflict", "--threads", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cueconflict.source is not set" in err[0], err
    assert not (run / "results" / "cueconflict.json").exists()
    assert main(["analyze", str(run), "--only", "cueconflict", "--threads", "1",
                 "--set", f"cueconflict.source={tmp_path / 'cue'}"]) == 0  # fmt: skip
    v = Result.load(run / "results", "cueconflict").values
    # every class name matches one of the model's (Trouser, Dress, Sneaker, Bag, Ankle boot)
    assert v["mapping"] == {"ankleboot": [9], "bag": [8], "dress": [3], "sneaker": [7],
                            "trouser": [1]}  # fmt: skip
    assert v["num_images"] == n == 75 and v["same_class"] == 15 and v["counted"] == 60
    assert v["shape_decisions"] + v["texture_decisions"] + v["other_decisions"] == 60
    low, high = v["shape_bias_interval"]
    assert 0 <= low <= v["shape_bias"] <= high <= 1
    assert (run / "figures" / "cueconflict.png").is_file()
