"""The AlterNet build-up search (Park & Kim 2022, §4.1; ``docs/methods/alternet.md``) as a
resumable experiment.

Start from a CNN and replace Conv blocks with MSA blocks from the end of the model:

1. Replace the last Conv block of the last stage with an MSA block; train; evaluate.
2. While an added MSA improves test accuracy over the best so far, add the next one to the
   same stage (AlterNet's layout ``[Conv]*(n1 - 2*n2) + [Conv, MSA]*n2`` puts it before the
   previous one, alternating with Convs). When it does not improve — or the stage is full —
   try the end of the previous stage instead, starting from the best layout.
3. MSAs in later stages get more heads and wider hidden dims: the base's ``heads`` grow with
   the stage and the attention width is the stage's channels / ``msa_reduction``.

The search stops when the first allowed stage has been tried, or the best layout holds
``max_msas`` MSAs. Every candidate is an AlterNet configuration (``msas`` per stage) trained as
an ordinary run directory ``DIR/runs/<layout>/`` (so it resumes and can be analysed), and the
search state ``DIR/buildup.json`` is rewritten atomically after every candidate. The search
is deterministic given the candidates' accuracies, so a killed search is continued by running
the same command again: finished candidates are read back, an interrupted one resumes from
its last epoch. ``DIR/best.yaml`` is the best candidate's run config
(``vitscope train --config DIR/best.yaml --out ...``) and ``DIR/buildup.png`` the figure.

Candidates are chosen on **test** accuracy, as in the paper; with a held-out split in mind
the same search works with any ``--data``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import distributed
from .config import RunConfig, dump_yaml, merge, resolve
from .errors import ConfigError, VitscopeError
from .io import atomic_write, atomic_write_json, atomic_write_text, provenance, writes_folder

#: base CNN -> (AlterNet builder, overrides): the base is that AlterNet with no MSA
BASES: dict[str, tuple[str, dict]] = {
    "resnet_tiny": ("alternet_tiny", {}),
    "resnet18": ("alternet50", {"block": "basic", "depths": [2, 2, 2, 2]}),
    # Alter-ResNet-50's block counts (3, 4, 6, 4): its last stage holds the paper's 2 MSAs
    "resnet50": ("alternet50", {}),
    "resnet50_imagenet": ("alternet50_imagenet", {}),
}

STATE = "buildup.json"
BEST = "best.yaml"
FIGURE = "buildup.png"


@dataclass(frozen=True)
class BuildupConfig:
    """What a build-up search trains and how it decides.

    Attributes:
        base: a CNN of :data:`BASES` (or any ``alternet*`` model, whose MSAs are removed).
        train_preset: training recipe of every candidate (``vitscope list presets``).
        overrides: RunConfig overrides of every candidate (data, train, augment sections).
        max_msas: stop once the best layout holds this many MSAs (None: no limit).
        min_stage: earliest stage (1-based) that may receive an MSA.
        min_gain: accuracy gain (fraction, e.g. 0.001 = 0.1 points) an MSA must bring to stay.
    """

    base: str = "resnet_tiny"
    train_preset: str = "cpu"
    overrides: dict = field(default_factory=dict)
    max_msas: int | None = None
    min_stage: int = 1
    min_gain: float = 0.0

    def __post_init__(self) -> None:
        if self.max_msas is not None and self.max_msas < 1:
            raise ConfigError(f"buildup max_msas must be >= 1, got {self.max_msas}")
        if self.min_stage < 1:
            raise ConfigError(f"buildup min_stage must be >= 1, got {self.min_stage}")
        if self.min_gain < 0:
            raise ConfigError(f"buildup min_gain must be >= 0, got {self.min_gain}")
        base_model(self.base)  # unknown bases raise here


def base_model(base: str) -> tuple[str, dict]:
    """The AlterNet builder and overrides of a base CNN name."""
    if base in BASES:
        return BASES[base]
    if base.startswith("alternet"):
        from .models import MODELS

        MODELS.get(base)
        return base, {}
    raise ConfigError(
        f"unknown build-up base {base!r}; valid: {', '.join(BASES)} or an alternet* model"
    )


def stage_depths(base: str) -> tuple[int, ...]:
    """Blocks per stage of the base (read off a built model)."""
    from .models import create_model

    name, kw = base_model(base)
    if "depths" in kw:
        nstages = len(kw["depths"])
    else:
        nstages = len(create_model(name, num_classes=10).stages)
    model = create_model(name, num_classes=10, **{**kw, "msas": [0] * nstages})
    return tuple(len(s) for s in model.stages)


def layout_key(msas: Sequence[int]) -> str:
    """Run-directory name of a layout: ``msas-0-1-1-2``."""
    return "msas-" + "-".join(str(m) for m in msas)


def layout_text(msas: Sequence[int], depths: Sequence[int]) -> str:
    """The paper's notation, e.g. ``c1=CC c2=CM c3=CM c4=CMCM``."""
    parts = []
    for i, (n1, n2) in enumerate(zip(depths, msas), 1):
        parts.append(f"c{i}=" + "C" * (n1 - 2 * n2) + "CM" * n2)
    return " ".join(parts)


def candidate_config(cfg: BuildupConfig, msas: Sequence[int]) -> RunConfig:
    """The run config of one candidate layout."""
    name, kw = base_model(cfg.base)
    model = {"name": name, "kwargs": {**kw, "msas": list(msas)}}
    return resolve(preset=cfg.train_preset, overrides=merge(cfg.overrides, {"model": model}))


Trainer = Callable[[RunConfig, Path], dict]


def train_candidate(cfg: RunConfig, run_dir: Path) -> dict:
    """Train (or resume, or read back) one candidate: its best test accuracy and NLL."""
    from .train import train

    t0 = time.perf_counter()
    result = train(cfg, run_dir)
    best = result.best
    return {
        "acc": float(best["acc"]),
        "nll": float(best["nll"]),
        "epoch": int(best["epoch"]),
        "params": int(result.last.get("params", 0)),
        "train_seconds": float(result.last.get("train_seconds", 0.0)),
        "wall_seconds": time.perf_counter() - t0,
    }


def _proposals(
    cfg: BuildupConfig, depths: Sequence[int], best: Sequence[int], stage: int
) -> tuple[list[int] | None, int]:
    """The next layout to try from ``best`` at ``stage`` (1-based), skipping full stages."""
    if cfg.max_msas is not None and sum(best) >= cfg.max_msas:
        return None, stage
    while stage >= cfg.min_stage:
        if best[stage - 1] < depths[stage - 1] // 2:
            cand = list(best)
            cand[stage - 1] += 1
            return cand, stage
        stage -= 1  # the stage is full: rule 2, go to the end of the previous stage
    return None, stage


def _label(msas: Sequence[int], parent: Sequence[int] | None) -> str:
    if parent is None:
        return "base"
    stage = next(i for i, (a, b) in enumerate(zip(msas, parent), 1) if a != b)
    return f"+c{stage}"


def _read_state(path: Path, cfg: BuildupConfig, depths: Sequence[int]) -> dict:
    if not path.is_file():
        return {}
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise VitscopeError(f"{path} is corrupt ({e}); delete it to restart the search") from None
    if state.get("base") != cfg.base or state.get("depths") != list(depths):
        raise VitscopeError(
            f"{path} holds a build-up of {state.get('base')!r}, not {cfg.base!r}; "
            "choose another --out"
        )
    return state


@writes_folder("out")
def buildup(
    cfg: BuildupConfig,
    out: str | Path,
    *,
    trainer: Trainer = train_candidate,
    log: Callable[[str], None] = print,
    figure: bool = True,
) -> dict:
    """Run (or continue) the build-up search in ``out``; returns the final state.

    Args:
        cfg: the base, the training recipe and the stopping rules.
        out: the search directory (``buildup.json``, ``best.yaml``, ``runs/<layout>/``).
        trainer: ``(run config, run dir) -> {"acc", "nll", "params", ...}``; the default
            trains with :func:`vitscope.train` (tests pass a scripted one).
        log: where progress lines go.
        figure: also write ``buildup.png``.
    """
    if not distributed.is_main():  # under torchrun every rank runs the search; rank 0 talks
        log = lambda line: None  # noqa: E731
    search = _Search(cfg, Path(out), trainer, log)
    best = search.evaluate([0] * len(search.depths), None)  # the best so far: the last kept
    best["kept"] = True
    search.save(best, "running")
    stage = len(search.depths)
    while True:
        cand, stage = _proposals(cfg, search.depths, best["msas"], stage)
        if cand is None:
            break
        step = search.evaluate(cand, best["msas"])
        step["kept"] = step["acc"] > best["acc"] + cfg.min_gain
        verdict = "kept" if step["kept"] else "rejected"
        log(f"buildup: {step['label']} -> {100 * step['acc']:.2f}% ({verdict})")
        if step["kept"]:
            best = step
        else:
            stage -= 1  # rule 2: the next MSA goes to the end of an earlier stage
        search.save(best, "running")
    body = search.save(best, "done")
    if distributed.is_main():
        atomic_write_text(search.root / BEST, dump_yaml(candidate_config(cfg, best["msas"])))
        if figure:
            _write_figure(search.root / FIGURE, search.steps)
    log(
        f"buildup: best {best['layout']} ({100 * best['acc']:.2f}%): "
        f"create_model({base_model(cfg.base)[0]!r}, msas={tuple(best['msas'])})"
    )
    return body


class _Search:
    """The state of one search: the recorded candidates, the steps taken, ``buildup.json``."""

    def __init__(self, cfg: BuildupConfig, root: Path, trainer: Trainer, log: Callable) -> None:
        self.cfg, self.root, self.trainer, self.log = cfg, root, trainer, log
        self.depths = stage_depths(cfg.base)
        self.path = root / STATE
        state = _read_state(self.path, cfg, self.depths)
        self.done = {layout_key(c["msas"]): c for c in state.get("steps", [])}
        self.steps: list[dict] = []  # every candidate, in search order
        candidate_config(cfg, [0] * len(self.depths))  # bad overrides fail before training
        if distributed.is_main():
            root.mkdir(parents=True, exist_ok=True)

    def save(self, best: dict, status: str) -> dict:
        """Rewrite ``buildup.json`` (rank 0) and return its body."""
        cfg = self.cfg
        body = {
            "base": cfg.base,
            "model": base_model(cfg.base)[0],
            "depths": list(self.depths),
            "status": status,
            "rules": {
                "max_msas": cfg.max_msas,
                "min_stage": cfg.min_stage,
                "min_gain": cfg.min_gain,
                "selected_on": "best test accuracy",
            },
            "overrides": cfg.overrides,
            "train_preset": cfg.train_preset,
            "steps": self.steps,
            "best": {k: best[k] for k in ("label", "msas", "layout", "acc", "run")},
            "provenance": provenance(),
        }
        if distributed.is_main():
            atomic_write_json(self.path, body)
        return body

    def evaluate(self, msas: list[int], parent: list[int] | None) -> dict:
        """The step of layout ``msas``: replayed if recorded, else trained."""
        key = layout_key(msas)
        if key in self.done:
            metrics = {k: self.done[key][k] for k in ("acc", "nll", "params")}
            metrics.update({k: self.done[key].get(k) for k in ("epoch", "train_seconds")})
        else:
            self.log(f"buildup: train {key} ({layout_text(msas, self.depths)})")
            run_dir = self.root / "runs" / key
            trained = self.trainer(candidate_config(self.cfg, msas), run_dir)
            metrics = distributed.broadcast_object(trained)
        step = {
            "step": len(self.steps),
            "label": _label(msas, parent),
            "msas": list(msas),
            "num_msas": sum(msas),
            "layout": layout_text(msas, self.depths),
            "run": str(Path("runs") / key),
            **metrics,
        }
        self.steps.append(step)
        return step


def _write_figure(path: Path, steps: Sequence[dict]) -> None:
    from .report.study_figures import buildup_figure

    fig = buildup_figure(
        [{"label": s["label"], "num_msas": s["num_msas"], "acc": 100 * s["acc"]} for s in steps]
    )
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=150))


__all__ = [
    "BASES",
    "BuildupConfig",
    "base_model",
    "buildup",
    "candidate_config",
    "layout_key",
    "layout_text",
    "stage_depths",
    "train_candidate",
]
