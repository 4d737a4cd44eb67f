"""Q2 of the paper, "Do MSAs act like Convs?": Fourier analysis, feature-map variance, noise."""

from __future__ import annotations

from collections.abc import Sequence

from ...analyses.keys import NoiseKeys
from ...results import Result
from .. import figures
from ..blocks import Block, FigureWriter, Table, num, percent
from ..claims.base import NOISE_HIGH_MIN, NOISE_LOW_MAX
from ..claims.robustness import noise_bands
from ..figures import single
from ..load import StudyRun
from .common import PerRun, analysis_blocks, question, result_rows


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
    return out


def noise_table(runs: Sequence[StudyRun]) -> Table:
    header = ["Run", "Clean acc", f"ΔAcc f ≤ {NOISE_LOW_MAX:g}π", f"ΔAcc f ≥ {NOISE_HIGH_MIN:g}π"]

    def row(r: StudyRun, res: Result) -> list[str]:
        low, high = noise_bands(res)
        clean = res.values.get(NoiseKeys.CLEAN_ACC)
        return [r.name, percent(clean), num(low, "+.2f"), num(high, "+.2f")]

    return Table(header, result_rows(runs, "noise", row), id="noise-table")
