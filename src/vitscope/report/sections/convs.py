"""Q2 of the paper, "Do MSAs act like Convs?": Fourier analysis, feature-map variance, noise,
and shape or texture measured directly (frequency-filtered accuracy, patch shuffling,
cue-conflict shape bias)."""

from __future__ import annotations

from collections.abc import Sequence

from ...analyses.keys import CueConflictKeys, FilteredKeys, NoiseKeys, ShuffleKeys
from ...results import Result
from .. import figures
from ..blocks import DASH, Block, FigureWriter, Heading, Table, Text, num, percent
from ..claims.base import NOISE_HIGH_MIN, NOISE_LOW_MAX, Resample
from ..claims.robustness import noise_bands
from ..claims.shape import low_pass_retention, shuffle_retention
from ..figures import single
from ..load import StudyRun
from .common import PerRun, analysis_blocks, question, result_rows
from .other import shape_analyses


def section_convs(runs: Sequence[StudyRun], figs: FigureWriter) -> list[Block]:
    """Q2: Fourier analysis, feature-map variance, noise robustness."""
    out = question(
        "2. Do MSAs act like Convs?",
        "q2",
        "The paper: no. MSAs are low-pass filters that reduce the high-frequency amplitude "
        "and the variance of feature maps, Convs are high-pass filters that raise both "
        "(Fig 2a, Fig 8, Fig 9); accordingly ViT is robust to high-frequency noise and "
        "ResNet to low-frequency noise (Fig 2b). Grey spans: MSA units; blue spans: "
        "downsampling units.",
    )
    fourier = [
        PerRun("fourier_high_freq", single(figures.high_freq),
               "ΔLog amplitude at 1.0π vs depth (Fig 8)"),
        PerRun("fourier_curves", single(figures.fourier_curves, (3.6, 4)),
               "ΔLog amplitude vs frequency, one curve per unit (Fig 2a)"),
    ]  # fmt: skip
    out += analysis_blocks(
        runs, figs, "fourier", "Fourier analysis of feature maps",
        "High-frequency ΔLog amplitude (1.0π) vs depth", figures=fourier,
    )  # fmt: skip
    variance = PerRun("variance", single(figures.variance), "Feature-map variance vs depth (Fig 9)")
    out += analysis_blocks(
        runs, figs, "variance", "Feature-map variance", "Feature-map variance vs depth",
        figures=[variance],
    )  # fmt: skip
    out += analysis_blocks(
        runs, figs, "noise", "Robustness to frequency-based noise",
        "ΔAccuracy under band-limited noise (Fig 2b)", table=noise_table,
    )  # fmt: skip
    return out + section_shape(runs, figs)


SHAPE_TITLES = {
    "filtered": ("Accuracy on frequency-filtered images",
                 "Accuracy vs cut-off, low-pass (solid) and high-pass (dashed)"),
    "shuffle": ("Accuracy on patch-shuffled images", "Accuracy vs grid size g (g×g patches)"),
    "cueconflict": ("Cue-conflict shape bias", "Shape bias with its 95% interval"),
}  # fmt: skip


def section_shape(runs: Sequence[StudyRun], figs: FigureWriter) -> list[Block]:
    """Shape or texture, measured directly: one subsection per analysis that ran, with the
    overlay the analysis declares, and one table of the numbers the claims read."""
    names = shape_analyses(runs)
    if not names:
        return []
    from ...analyses import get_analysis

    intro = (
        "The paper infers that MSAs are shape-biased from their low-pass behaviour. Here it "
        "is measured: accuracy on low-pass images (texture removed) and high-pass images "
        "(shape removed), on images whose patches are shuffled (global shape destroyed, "
        "local texture kept; Naseer et al. 2021), and the shape bias on cue-conflict images "
        "(Geirhos et al. 2019) where the study has them. *Retention*: the share of the "
        "accuracy above chance that survives, averaged over the cut-offs or grids g > 1."
    )
    out: list[Block] = [Heading("Shape or texture, measured directly", 3, "shape"), Text(intro)]
    for name in names:
        title, caption = SHAPE_TITLES[name]
        draw = get_analysis(name).compare_figure()
        out += analysis_blocks(runs, figs, name, title, caption, draw=draw)
    out.append(shape_table(runs))
    return out


def shape_table(runs: Sequence[StudyRun]) -> Table:
    header = ["Run", "Clean acc", "Low-pass retention", "Mean high-pass acc",
              "Shuffle retention", "Shape bias [95%]"]  # fmt: skip
    rows = []
    for r in runs:
        f, s, c = (r.results.get(n) for n in ("filtered", "shuffle", "cueconflict"))
        if f is None and s is None and c is None:
            continue
        clean = f.values.get(FilteredKeys.CLEAN_ACC) if f is not None else None
        if clean is None and s is not None:  # g = 1 is the intact image
            clean = (s.values.get(ShuffleKeys.ACCURACY) or [None])[0]
        high = f.values.get(FilteredKeys.HIGH_ACC) if f is not None else None
        bias = DASH
        if c is not None and c.values.get(CueConflictKeys.SHAPE_BIAS) is not None:
            low, hi = c.values.get(CueConflictKeys.INTERVAL) or (None, None)
            point = c.values[CueConflictKeys.SHAPE_BIAS]
            bias = f"{num(point, '.3f')} [{num(low, '.2f')}, {num(hi, '.2f')}]"
        rows.append([
            r.name, percent(clean),
            num(low_pass_retention(r, Resample()), ".3f") if f is not None else DASH,
            percent(sum(high) / len(high)) if high else DASH,
            num(shuffle_retention(r, Resample()), ".3f") if s is not None else DASH,
            bias,
        ])  # fmt: skip
    return Table(header, rows, id="shape-table")


def noise_table(runs: Sequence[StudyRun]) -> Table:
    header = ["Run", "Clean acc", f"ΔAcc f ≤ {NOISE_LOW_MAX:g}π", f"ΔAcc f ≥ {NOISE_HIGH_MIN:g}π"]

    def row(r: StudyRun, res: Result) -> list[str]:
        low, high = noise_bands(res)
        clean = res.values.get(NoiseKeys.CLEAN_ACC)
        return [r.name, percent(clean), num(low, "+.2f"), num(high, "+.2f")]

    return Table(header, result_rows(runs, "noise", row), id="noise-table")
