"""The result keys of the built-in analyses: one class per analysis, torch-free.

Each analysis module writes its result through its class (``fourier.Keys`` is
:class:`FourierKeys`), and every reader (figures, summaries, the report's sections and claim
rules) reads through the same class, so a renamed key fails loudly everywhere at once.
``REQUIRED`` names the keys without which a saved result cannot be read at all (the report
refuses it and says how to compute it again); every other key but the ``OPTIONAL`` ones is
part of a whole result (``vitscope analyze`` computes a result that lacks one again). This
module imports nothing, so the report can use it without loading torch or the analyses.
"""

from __future__ import annotations


class FourierKeys:
    """Keys of the ``fourier`` result (``values``; arrays ``map_<i>``, ``curve_<i>``)."""

    UNITS = "units"  # the unit table (name, kind, stage, downsample, depth)
    HIGH_FREQ = "high_freq"  # ΔLog amplitude at 1.0π, one per unit
    CURVES = "curves"  # ΔLog amplitude curves, one per unit
    NUM_IMAGES = "num_images"
    MAP = "map_{}"  # array: mean centred log amplitude of unit i
    CURVE = "curve_{}"  # array: the curve of unit i
    HIGH_FREQ_IMAGES = "high_freq_images"  # array (units, images): each image's Δ at 1.0π
    REQUIRED = (UNITS, HIGH_FREQ)  # without these no reader can use it


class VarianceKeys:
    """Keys of the ``variance`` result."""

    UNITS = "units"  # the unit table
    VARIANCE = "variance"  # mean spatial variance, one per unit
    VARIANCE_IMAGES = "variance_images"  # array (units, images): each image's variance
    NUM_IMAGES = "num_images"
    REQUIRED = (UNITS, VARIANCE)  # without these no reader can use it


class NoiseKeys:
    """Keys of the ``noise`` result (``values``; arrays ``frequencies``, ``delta_acc``)."""

    FREQUENCIES = "frequencies"  # band centres, units of π
    DELTA_ACC = "delta_acc"  # accuracy change (percentage points), one per band
    CLEAN_ACC = "clean_acc"  # clean accuracy (%)
    BAND_BINS = "band_bins"  # frequency bins kept per band
    NUM_IMAGES = "num_images"
    CORRECT = "correct"  # array (1 + bands, images) uint8: row 0 clean, row k band k
    REQUIRED = (FREQUENCIES, DELTA_ACC)  # without these no reader can use it


class LesionKeys:
    """Keys of the ``lesion`` result."""

    UNITS = "units"  # the unit table
    DELTA_ACC = "delta_acc"  # accuracy change (points) without each unit; None: not removable
    BASE_ACC = "base_acc"  # intact accuracy (%)
    NUM_IMAGES = "num_images"
    REMOVED = "removed"  # the unit index of each lesion row of CORRECT
    CORRECT = "correct"  # array (1 + lesions, images) uint8: row 0 intact, row j REMOVED[j-1]
    REQUIRED = (UNITS, DELTA_ACC)  # without these no reader can use it


class OverfittingKeys:
    """Keys of the ``overfitting`` result."""

    TRAIN_NLL = "train_nll"  # mean soft-target NLL on augmented training batches
    TRAIN_ACC = "train_acc"  # accuracy against the argmax of the soft targets
    IMAGES = "images"
    TRANSFORM = "transform"
    REQUIRED = (TRAIN_NLL,)  # without these no reader can use it


class LandscapeKeys:
    """Keys of the ``landscape`` result (``values``; arrays ``xs``, ``ys``, the grids, d1, d2)."""

    COORDS = "coords"  # {"xs": [...], "ys": [...]}
    LOSS = "loss"  # NLL + L2 grid, rows y, columns x
    NLL = "nll"
    NLL_BATCHES = "nll_batches"  # array (ys, xs, batches): each batch's mean NLL per point
    ACC = "acc"
    L2 = "l2"
    SECONDS = "seconds"
    CENTER = "center"  # loss, nll, acc, l2 at θ0
    RINGS = "rings"  # mean NLL / loss / acc over L∞ rings (r, points, nll, loss, acc, finite)
    L2_MODE = "l2_mode"  # the L2 term: "squared", "official" or "none"
    WEIGHT_DECAY = "weight_decay"  # the L2 coefficient
    XS = "xs"  # array
    YS = "ys"  # array
    PCA = "pca"  # directions=pca: explained variance, checkpoints, trajectory, scale
    EIGEN = "eigen"  # directions=eigen: the eigenvalues of the directions, residuals, scale
    TRAJECTORY = "trajectory"  # array (points, dims): the trajectory on the PCA plane
    # directions=interpolate: endpoint, file, buffers, ends (α = 0, 1), barrier, distance
    INTERPOLATE = "interpolate"
    OPTIONAL = (PCA, EIGEN, TRAJECTORY, INTERPOLATE)  # only for those directions
    REQUIRED = (XS, YS, LOSS)  # without these no reader can use it


class HessianKeys:
    """Keys of the ``hessian`` result that readers use (``values``; arrays alike)."""

    EIGENVALUES = "eigenvalues"  # per batch: top-k by magnitude, descending
    LARGEST = "largest"  # per batch: the largest Ritz value
    SMALLEST = "smallest"  # per batch: the most negative Ritz value
    CONVERGED = "converged"  # per batch: whether Lanczos converged
    SUMMARY = "summary"  # negative_fraction, max, min, median, top1_mean, ...
    DENSITY = "density"  # SLQ moments per density batch
    TRACE = "trace"  # Hutchinson estimates
    OPERATOR = "operator"
    DENSITY_NODES = "density_nodes"  # array (density batches, probes, steps)
    DENSITY_WEIGHTS = "density_weights"  # array
    OPTIONAL = (DENSITY, TRACE, DENSITY_NODES, DENSITY_WEIGHTS)  # only when computed
    REQUIRED = (EIGENVALUES,)  # without these no reader can use it


class CorruptionKeys:
    """Keys of the ``corruption`` result."""

    CORRUPTIONS = "corruptions"  # names, in row order
    SEVERITIES = "severities"
    CLEAN_ACC = "clean_acc"  # %
    ACCURACY = "accuracy"  # [corruption][severity] accuracy (%)
    MEAN_ACC = "mean_acc"  # the mean over every corruption and severity: the robustness (%)
    ERRORS = "errors"  # per corruption: the error summed over severities (%, for mCE)
    NUM_IMAGES = "num_images"
    SOURCE = "source"  # "generated" or the folder of released arrays
    CORRECT = "correct"  # array (1 + C * S, images) uint8: row 0 clean, row 1 + c S + s - 1
    REQUIRED = (CORRUPTIONS, SEVERITIES, ACCURACY)  # without these no reader can use it


__all__ = [
    "CorruptionKeys",
    "FourierKeys",
    "VarianceKeys",
    "NoiseKeys",
    "LesionKeys",
    "OverfittingKeys",
    "LandscapeKeys",
    "HessianKeys",
]


class FilteredKeys:
    """Keys of the ``filtered`` result (``values``; arrays ``cutoffs``, ``correct``)."""

    CUTOFFS = "cutoffs"  # radial cut-offs, units of π
    LOW_ACC = "low_acc"  # accuracy (%) on low-pass images, one per cut-off
    HIGH_ACC = "high_acc"  # accuracy (%) on high-pass images, one per cut-off
    CLEAN_ACC = "clean_acc"  # accuracy (%) on the images as they are
    CHANCE_ACC = "chance_acc"  # accuracy (%) of the best constant guess (the commonest label)
    KEPT = "kept"  # share of the spectrum's bins a low-pass at each cut-off keeps
    NUM_IMAGES = "num_images"
    # array (1 + 2 cut-offs, images) uint8: row 0 clean, rows 1..C low-pass, C+1..2C high-pass
    CORRECT = "correct"
    REQUIRED = (CUTOFFS, LOW_ACC, HIGH_ACC, CLEAN_ACC)


class ShuffleKeys:
    """Keys of the ``shuffle`` result (``values``; arrays ``grids``, ``correct``)."""

    GRIDS = "grids"  # the grid sizes g that ran (g x g patches); always starts with 1
    ACCURACY = "accuracy"  # accuracy (%) on shuffled images, one per grid (g = 1: intact)
    CHANCE_ACC = "chance_acc"  # accuracy (%) of the best constant guess (the commonest label)
    SKIPPED = "skipped"  # grids asked for that do not divide the image size
    PATCH = "patch"  # patch side (pixels) per grid
    NUM_IMAGES = "num_images"
    CORRECT = "correct"  # array (grids, images) uint8: row k grid GRIDS[k]
    REQUIRED = (GRIDS, ACCURACY)


class CueConflictKeys:
    """Keys of the ``cueconflict`` result (``values``; arrays ``shape``, ``texture``,
    ``decision``: one entry per image, indices into ``categories``)."""

    CATEGORIES = "categories"  # the cue-conflict classes the model's classes are mapped to
    MAPPING = "mapping"  # category -> the model's class indices whose probabilities it pools
    SHAPE_BIAS = "shape_bias"  # shape decisions / (shape + texture decisions), in [0, 1]
    INTERVAL = "shape_bias_interval"  # Wilson 95% interval of SHAPE_BIAS (over the decisions)
    SHAPE_DECISIONS = "shape_decisions"  # counted images decided by their shape class
    TEXTURE_DECISIONS = "texture_decisions"  # counted images decided by their texture class
    OTHER_DECISIONS = "other_decisions"  # counted images decided as a third category
    COUNTED = "counted"  # images with a conflict whose two classes are both mapped
    SAME = "same_class"  # images whose shape and texture class agree (no conflict; left out)
    UNMAPPED = "unmapped"  # images with a class the model does not know (left out)
    SHAPE_ACC = "shape_acc"  # % of counted images decided by shape
    TEXTURE_ACC = "texture_acc"  # % of counted images decided by texture
    BY_SHAPE = "by_shape"  # category -> shape bias over the counted images of that shape
    NUM_IMAGES = "num_images"  # images read
    SHAPE = "shape"  # array (images,) int16: the shape class (-1: not mapped)
    TEXTURE = "texture"  # array (images,) int16: the texture class (-1: not mapped)
    DECISION = "decision"  # array (images,) int16: the category the model chose
    REQUIRED = (CATEGORIES, SHAPE_BIAS, SHAPE_DECISIONS, TEXTURE_DECISIONS)
    OPTIONAL = (BY_SHAPE,)
