"""Loss landscapes in the file formats of the field's reference tool (Li et al. 2018,
``loss-landscape``): ``vitscope export landscape RUN_DIR --format h5|vtp|csv``.

* ``h5``: the keys the reference tool's ``plot_surface.py`` writes and its ``plot_2D.py`` /
  ``plot_1D.py`` / ``h52vtp.py`` read: ``xcoordinates``, ``ycoordinates`` (2-D only),
  ``train_loss`` (the NLL, as the reference tool's cross-entropy) and ``train_acc`` (%), each
  surface ``(len(y), len(x))`` as ``np.meshgrid(x, y)`` lays it out (a 1-D landscape:
  ``(len(x),)``); besides them ``train_loss_l2`` (vitscope's NLL + L2) and ``l2``. Needs the
  ``h5py`` extra (``pip install 'vitscope[h5]'``).
* ``vtp``: a VTK XML PolyData surface for ParaView, as ``h52vtp.py`` makes: one point per grid
  point at ``(x, y, z)``, ``z`` the chosen surface (``--surface``, default ``train_loss``), one
  quad per grid cell (a 1-D landscape: one polyline), and every surface as point data. Plain
  XML, no dependency.
* ``csv``: one row per grid point: ``x, y, train_loss, train_loss_l2, train_acc, l2``.

Files are written atomically; nothing is recomputed (``vitscope analyze RUN --only
landscape`` makes the result).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .errors import VitscopeError
from .io import atomic_write, atomic_write_text
from .results import Result, result_name

FORMATS = ("h5", "vtp", "csv")
SURFACES = ("train_loss", "train_loss_l2", "train_acc", "l2")


def surfaces(result: Result) -> tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray]]:
    """``(x, y or None for 1-D, {surface: (len(y), len(x)) array})`` of a landscape result,
    named as the reference tool names them (accuracy in %)."""
    a = result.arrays
    missing = [k for k in ("xs", "ys", "nll", "loss", "acc") if k not in a]
    if missing:
        raise VitscopeError(
            f"the landscape result lacks {', '.join(missing)}; run `vitscope analyze RUN "
            "--only landscape --force`"
        )
    xs = np.asarray(a["xs"], float)
    ys = np.asarray(a["ys"], float)
    two_d = int(result.values.get("dims", 2 if len(ys) > 1 else 1)) == 2
    grids = {
        "train_loss": np.asarray(a["nll"], float),
        "train_loss_l2": np.asarray(a["loss"], float),
        "train_acc": 100.0 * np.asarray(a["acc"], float),
        "l2": np.asarray(a["l2"], float) if "l2" in a else np.full((len(ys), len(xs)), np.nan),
    }
    return xs, (ys if two_d else None), grids


def _h5py():
    try:
        import h5py
    except ImportError:
        raise VitscopeError(
            "the h5 format needs h5py: pip install 'vitscope[h5]' (or use --format csv/vtp)"
        ) from None
    return h5py


def write_h5(path: Path, result: Result) -> Path:
    h5py = _h5py()
    xs, ys, grids = surfaces(result)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            f["xcoordinates"] = xs
            if ys is not None:
                f["ycoordinates"] = ys
            for name, g in grids.items():
                f[name] = g if ys is not None else g[0]
            f.attrs["written_by"] = "vitscope export landscape"
            f.attrs["train_loss"] = "NLL (cross-entropy) on the augmented training batches"
            f.attrs["train_loss_l2"] = "NLL + L2, the objective vitscope's landscape shows"

    return atomic_write(path, write)


def _number(v: float) -> str:
    """A value as VTK's ascii and the CSV write it (``nan`` for anything non-finite)."""
    return "nan" if not math.isfinite(v) else repr(float(v))


def _ascii(values) -> str:
    return " ".join(map(_number, values))


def vtp_text(result: Result, surface: str = "train_loss", zmax: float | None = None,
             log: bool = False) -> str:  # fmt: skip
    """The VTK XML PolyData of the landscape: points ``(x, y, z)`` with ``z`` the
    ``surface`` (clipped at ``zmax``, ``log``: ``log(z + 0.1)`` as ``h52vtp.py --log``), quads
    (2-D) or one polyline (1-D), every surface as point data."""
    if surface not in SURFACES:
        raise VitscopeError(f"--surface must be one of {', '.join(SURFACES)}, got {surface!r}")
    xs, ys, grids = surfaces(result)
    yy = ys if ys is not None else np.zeros(1)
    nx, ny = len(xs), len(yy)
    gx, gy = np.meshgrid(xs, yy)  # (ny, nx), x along the columns
    z = grids[surface].copy()
    if zmax is not None:
        z = np.minimum(z, zmax)
    if log:
        z = np.log(z + 0.1)
    points = np.stack([gx.ravel(), gy.ravel(), z.ravel()], 1)
    idx = np.arange(nx * ny).reshape(ny, nx)
    if ys is not None:
        quads = np.stack([idx[:-1, :-1], idx[:-1, 1:], idx[1:, 1:], idx[1:, :-1]], -1)
        cells, kind = quads.reshape(-1, 4), "Polys"
    else:
        cells, kind = idx.reshape(1, -1), "Lines"
    offsets = np.cumsum([len(c) for c in cells])
    counts = {"Polys": 0, "Lines": 0, kind: len(cells)}
    data = "\n".join(
        f'        <DataArray type="Float64" Name="{name}" format="ascii">'
        f"{_ascii(g.ravel())}</DataArray>"
        for name, g in grids.items()
    )
    return (
        '<?xml version="1.0"?>\n'
        '<VTKFile type="PolyData" version="0.1" byte_order="LittleEndian">\n'
        "  <PolyData>\n"
        f'    <Piece NumberOfPoints="{len(points)}" NumberOfVerts="0" '
        f'NumberOfLines="{counts["Lines"]}" NumberOfStrips="0" '
        f'NumberOfPolys="{counts["Polys"]}">\n'
        f'      <PointData Scalars="{surface}">\n{data}\n      </PointData>\n'
        "      <Points>\n"
        '        <DataArray type="Float64" NumberOfComponents="3" format="ascii">'
        f"{_ascii(points.ravel())}</DataArray>\n"
        "      </Points>\n"
        f"      <{kind}>\n"
        '        <DataArray type="Int64" Name="connectivity" format="ascii">'
        f"{' '.join(map(str, cells.ravel()))}</DataArray>\n"
        '        <DataArray type="Int64" Name="offsets" format="ascii">'
        f"{' '.join(map(str, offsets))}</DataArray>\n"
        f"      </{kind}>\n"
        "    </Piece>\n"
        "  </PolyData>\n"
        "</VTKFile>\n"
    )


def csv_text(result: Result) -> str:
    xs, ys, grids = surfaces(result)
    yy = ys if ys is not None else np.zeros(1)
    lines = ["x,y," + ",".join(SURFACES)]
    for j, y in enumerate(yy):
        for i, x in enumerate(xs):
            row = [repr(float(x)), repr(float(y)), *(_number(grids[s][j, i]) for s in SURFACES)]
            lines.append(",".join(row))
    return "\n".join(lines) + "\n"


def export_landscape(
    run_dir: str | Path,
    fmt: str,
    out: str | Path | None = None,
    *,
    surface: str = "train_loss",
    zmax: float | None = None,
    log: bool = False,
    tag: str | None = None,
) -> Path:
    """Write ``run_dir``'s landscape result (the one saved with ``tag``, if given) as ``fmt``
    to ``out`` (default ``RUN_DIR/exports/<result name>.<fmt>``: ``landscape.h5``,
    ``landscape-pca.h5``)."""
    if fmt not in FORMATS:
        raise VitscopeError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    run = Path(run_dir)
    if not run.is_dir():
        raise VitscopeError(f"run directory {run} does not exist")
    name = result_name("landscape", tag)
    result = Result.load(run / "results", name)
    path = Path(out) if out is not None else run / "exports" / f"{name}.{fmt}"
    if fmt == "h5":
        return write_h5(path, result)
    # the text is made first: a result that lacks a surface is one line, nothing written
    text = vtp_text(result, surface, zmax, log) if fmt == "vtp" else csv_text(result)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, text)


__all__ = ["FORMATS", "SURFACES", "csv_text", "export_landscape", "surfaces", "vtp_text",
           "write_h5"]  # fmt: skip
