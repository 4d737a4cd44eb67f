"""Cue-conflict shape bias: the folder loader, Wilson's interval against scipy, the metric on
hand-made decisions, and the whole analysis on synthetic shape-vs-texture images whose answer
is known: a model that reads only the silhouette has shape bias 1, one that reads only the
stripes' direction 0, and one that reads the silhouette for disks only the share of
disk-shaped conflicts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from vitscope.analyses import get_analysis
from vitscope.analyses.base import EvalData
from vitscope.analyses.cueconflict import (
    decide,
    resolve_mapping,
    shape_bias_counts,
    wilson,
)
from vitscope.data import cueconflict as cue
from vitscope.errors import ConfigError, DatasetError

S = 32  # image side
MEAN, STD = (0.5,), (0.25,)


@pytest.mark.parametrize(
    "stem, expected",
    [("airplane1-bicycle2", ("airplane", "bicycle")), ("Cat10-elephant3", ("cat", "elephant")),
     ("ankleboot1-bag12", ("ankleboot", "bag")), ("knife-oven", ("knife", "oven")),
     ("t4-x", ("t", "x")), ("airplane1", None), ("a1-b2-c3", None), ("12-3", None),
     ("-bird1", None)],
)  # fmt: skip
def test_file_names_give_shape_and_texture(stem, expected):
    assert cue.parse_name(stem) == expected


@pytest.mark.parametrize("k, n", [(0, 10), (3, 10), (8, 10), (10, 10), (1, 1), (37, 120)])
def test_wilson_interval_matches_scipy(k, n):
    from scipy.stats import binomtest

    ref = binomtest(k, n).proportion_ci(0.95, method="wilson")
    low, high = wilson(k, n)
    assert low == pytest.approx(ref.low, abs=1e-12) and high == pytest.approx(ref.high, abs=1e-12)
    assert low <= k / n <= high
    assert all(math.isnan(v) for v in wilson(0, 0))


def test_counts_leave_out_same_class_and_unmapped_images():
    shape = np.array([0, 0, 1, 1, 2, 0, -1, 1])
    texture = np.array([1, 2, 0, 2, 0, 0, 1, -1])
    decision = np.array([0, 2, 2, 1, 1, 0, 1, 1])
    # counted: rows 0-4 (row 5 same class, rows 6-7 unmapped)
    # row 0 shape, row 1 texture, row 2 other, row 3 shape, row 4 other
    assert shape_bias_counts(shape, texture, decision)[:3] == (2, 1, 2)
    assert shape_bias_counts(shape, texture, decision)[3].tolist() == [1] * 5 + [0] * 3


def test_decision_pools_each_category_classes():
    probs = torch.tensor([[0.5, 0.0, 0.25, 0.25], [0.1, 0.3, 0.3, 0.3]])
    mapping = {"a": [0], "b": [1, 2, 3]}
    assert decide(probs, mapping, "mean").tolist() == [0, 1]  # b: mean 0.1666 vs 0.5
    assert decide(probs, mapping, "max").tolist() == [0, 1]
    probs = torch.tensor([[0.4, 0.0, 0.0, 0.6]])
    assert decide(probs, mapping, "mean").tolist() == [0] and decide(
        probs, mapping, "max"
    ).tolist() == [1]


def test_class_mapping_by_name_or_as_configured():
    cats = ["bag", "dress", "knife", "trouser"]
    model = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
             "Sneaker", "Bag", "Ankle boot")  # fmt: skip
    assert resolve_mapping(cats, {}, model, 10) == {"bag": [8], "dress": [3], "trouser": [1]}
    got = resolve_mapping(cats, {"knife": (5, "sneaker"), "bag": ("Bag",)}, model, 10)
    assert got == {"bag": [8], "knife": [5, 7]}
    for bad, words in [({"cat": (1,)}, "which no image has"), ({"bag": (10,)}, "outside"),
                       ({"bag": ("hat",)}, "no class of the model"),
                       ({"bag": (1,)}, "maps 1 of")]:  # fmt: skip
        with pytest.raises(ConfigError, match=words):
            resolve_mapping(cats, bad, model, 10)
    with pytest.raises(ConfigError, match="at least 2 are needed"):
        resolve_mapping(["airplane", "oven"], {}, model, 10)


# ---- synthetic cue-conflict images: a silhouette (shape) filled with stripes (texture) -------

SHAPES = ("disk", "square")  # the model's classes, in order
STRIPES = {"disk": "rows", "square": "cols", "cross": "rows"}


def _silhouette(name: str, side: int) -> np.ndarray:
    i, j = np.mgrid[:side, :side] / side - 0.5
    if name == "disk":
        return i**2 + j**2 < 0.35**2
    if name == "square":
        return (abs(i) < 0.3) & (abs(j) < 0.3)
    return ((abs(i) < 0.1) | (abs(j) < 0.1)) & (abs(i) < 0.4) & (abs(j) < 0.4)  # cross


def _stripes(name: str, side: int) -> np.ndarray:
    i, j = np.mgrid[:side, :side]
    k = i if STRIPES[name] == "rows" else j
    return np.where(k % 4 < 2, 255, 128).astype(np.uint8)


def cue_image(shape: str, texture: str, side: int = S) -> np.ndarray:
    return np.where(_silhouette(shape, side), _stripes(texture, side), 0).astype(np.uint8)


def write_folder(root, pairs, side=S, flat=False):
    for n, (shape, texture) in enumerate(pairs):
        folder = root if flat else root / shape
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(cue_image(shape, texture, side)).save(
            folder / f"{shape}{n}-{texture}{n}.png"
        )


class Reader(torch.nn.Module):
    """Logits for (disk, square) from the silhouette, the stripes or a mix of both."""

    def __init__(self, reads: str) -> None:
        super().__init__()
        self.reads = reads
        templates = [torch.from_numpy(_silhouette(s, S)).float() for s in SHAPES]
        self.register_buffer("templates", torch.stack(templates))

    def forward(self, x):
        img = x[:, 0] * STD[0] + MEAN[0]  # back to [0, 1]
        mask = (img > 0.1).float()
        iou = (mask[:, None] * self.templates).sum((-2, -1)) / (
            (mask[:, None] + self.templates).clamp(max=1).sum((-2, -1)))  # fmt: skip
        shape_logits = 10 * iou
        dy = (img[:, 1:] - img[:, :-1]).abs().sum((-2, -1))  # horizontal stripes: rows differ
        dx = (img[:, :, 1:] - img[:, :, :-1]).abs().sum((-2, -1))
        texture_logits = torch.stack([dy - dx, dx - dy], 1)
        if self.reads == "shape":
            return shape_logits
        if self.reads == "texture":
            return texture_logits
        disk = shape_logits.argmax(1, keepdim=True) == 0  # silhouette for disks, else texture
        return torch.where(disk, shape_logits, texture_logits)


def _data() -> EvalData:
    return EvalData(torch.zeros(4, 1, S, S, dtype=torch.uint8), torch.tensor([0, 1, 0, 1]),
                    MEAN, STD, "synthetic", classes=SHAPES)  # fmt: skip


PAIRS = [("disk", "square")] * 3 + [("square", "disk")] * 5 + [("disk", "disk"),
         ("square", "square"), ("cross", "disk"), ("disk", "cross")]  # fmt: skip


@pytest.mark.parametrize("flat", [False, True])
@pytest.mark.parametrize("side", [S, 2 * S])
def test_shape_bias_of_models_that_read_shape_texture_or_both(tmp_path, flat, side):
    write_folder(tmp_path / "cue", PAIRS, side, flat)
    analysis = get_analysis("cueconflict")
    cfg = analysis.config(source=str(tmp_path / "cue"), batch_size=5)
    got = {}
    for reads in ("shape", "texture", "mixed"):
        res = analysis.execute(Reader(reads), _data(), cfg)
        v = res.values
        assert v["categories"] == ["disk", "square"] and v["mapping"] == {
            "disk": [0],
            "square": [1],
        }
        assert v["num_images"] == 12 and v["counted"] == 8 and v["same_class"] == 2
        assert v["unmapped"] == 2
        assert v["shape_decisions"] + v["texture_decisions"] + v["other_decisions"] == 8
        low, high = v["shape_bias_interval"]
        assert low <= v["shape_bias"] <= high
        assert len(res.arrays["decision"]) == 12
        got[reads] = v
    assert got["shape"]["shape_bias"] == 1.0 and got["shape"]["shape_decisions"] == 8
    assert got["texture"]["shape_bias"] == 0.0 and got["texture"]["texture_decisions"] == 8
    # the mixed model reads the silhouette of the 3 disk-shaped conflicts, the stripes of the
    # 5 square-shaped ones
    assert got["mixed"]["shape_bias"] == pytest.approx(3 / 8)
    assert got["mixed"]["by_shape"] == {"disk": 1.0, "square": 0.0}
    assert got["mixed"]["shape_bias_interval"] == pytest.approx(list(wilson(3, 8)))


def test_loader_reads_grey_and_rgb_at_the_models_size(tmp_path):
    write_folder(tmp_path, [("disk", "square")], side=64)
    images = cue.scan(tmp_path)
    grey, rgb = cue.read(images, 1, S, S), cue.read(images, 3, 16, 24)
    assert grey.shape == (1, 1, S, S) and grey.dtype == torch.uint8
    assert rgb.shape == (1, 3, 16, 24) and torch.equal(rgb[:, 0], rgb[:, 1])
    exact = cue.read(cue.scan(tmp_path), 1, 64, 64)[0, 0].numpy()
    assert np.array_equal(exact, cue_image("disk", "square", 64))  # no resize: bit for bit


def test_bad_folders_are_one_line_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        cue.scan(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds no images"):
        cue.scan(tmp_path / "empty")
    write_folder(tmp_path / "wrong", [("disk", "square")])
    (tmp_path / "wrong" / "disk" / "disk0-square0.png").rename(
        tmp_path / "wrong" / "disk" / "square0-disk0.png"
    )
    with pytest.raises(DatasetError, match="lies in the 'disk' folder"):
        cue.scan(tmp_path / "wrong")
    write_folder(tmp_path / "named", [("disk", "square")], flat=True)
    (tmp_path / "named" / "disk0-square0.png").rename(tmp_path / "named" / "photo.png")
    with pytest.raises(DatasetError, match="is not named <shape><n>-<texture><m>"):
        cue.scan(tmp_path / "named")
    deep = tmp_path / "deep" / "a" / "b"
    deep.mkdir(parents=True)
    Image.fromarray(cue_image("disk", "square")).save(deep / "disk1-square1.png")
    with pytest.raises(DatasetError, match="2 folders below"):
        cue.scan(tmp_path / "deep")
    broken = tmp_path / "broken" / "disk"
    broken.mkdir(parents=True)
    (broken / "disk1-square1.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="cannot read image"):
        cue.read(cue.scan(tmp_path / "broken"), 1, S, S)
    analysis = get_analysis("cueconflict")
    with pytest.raises(ConfigError, match="cueconflict.source is not set"):
        analysis.execute(Reader("shape"), _data(), analysis.config())
    for bad, words in [({"aggregate": "median"}, "mean, max"), ({"num_images": -1}, ">= 0"),
                       ({"classes": {"disk": ()}}, "lists no class")]:  # fmt: skip
        with pytest.raises(ConfigError, match=words):
            analysis.config(**bad)


def test_cueconflict_is_not_in_the_default_analyses():
    from vitscope.run_analyses import parse_only

    assert "cueconflict" not in parse_only(None) and "filtered" in parse_only(None)
    assert parse_only("cueconflict") == ["cueconflict"]
