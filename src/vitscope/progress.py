"""Progress bars that suit a terminal and a log file alike (torch-free).

Bars are drawn only on a terminal: tqdm's own rule (``disable=None``: off when the stream is
not a TTY), so SLURM and CI logs get the one-line summaries instead of ten redraws a second.
``TQDM_DISABLE=1`` turns them off everywhere; a caller's ``progress=False`` (``--no-progress``)
does too.
"""

from __future__ import annotations

import os

_FALSE = ("", "0", "false", "no", "off")


def bar_disable(enabled: bool = True) -> bool | None:
    """The ``disable`` argument for a tqdm bar: True when switched off (by the caller or by
    ``$TQDM_DISABLE``), else None (tqdm decides: a bar on a terminal, none in a log)."""
    if not enabled or os.environ.get("TQDM_DISABLE", "").strip().lower() not in _FALSE:
        return True
    return None
