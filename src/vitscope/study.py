"""Composition of the verbs: analyse a run (or any model), then draw its figures.

``analyze`` is what ``vitscope analyze RUN_DIR`` calls: it loads the run's checkpoint and test
split, runs each requested analysis whose result is missing (or all with ``force``), saves the
results atomically under ``RUN_DIR/results`` and draws their figures under ``RUN_DIR/figures``.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch.nn as nn

from .analyses import ANALYSES, EvalData, Result, TrainData, get_analysis
from .config import (
    ConfigError,
    RunConfig,
    dump_yaml,
    from_dict,
    load_yaml,
    merge,
    parse_overrides,
    resolve,
    to_dict,
)
from .errors import VitscopeError
from .io import RunDir, atomic_write_text
from .train import distributed as dist_utils


def analysis_configs(names: Sequence[str], sets: Sequence[str] = (), device: str = "cpu") -> dict:
    """Per-analysis Config objects from ``--set <analysis>.<field>=value`` items."""
    overrides = parse_overrides(list(sets))
    unknown = sorted(set(overrides) - set(ANALYSES))
    if unknown:
        raise ConfigError(f"--set {unknown[0]}.*: unknown analysis; valid: {', '.join(ANALYSES)}")
    configs = {}
    for name in names:
        module = get_analysis(name)
        cfg = from_dict(module.Config, overrides.get(name, {}), name)
        configs[name] = replace(cfg, device=device) if hasattr(cfg, "device") else cfg
    return configs


def parse_only(only: str | Sequence[str] | None) -> list[str]:
    if only is None:
        return list(ANALYSES)
    names = [n.strip() for n in (only.split(",") if isinstance(only, str) else only) if n.strip()]
    for n in names:
        get_analysis(n)
    return names


def analyze_model(
    model: nn.Module,
    data: EvalData,
    out_dir: str | Path,
    *,
    only: str | Sequence[str] | None = None,
    sets: Sequence[str] = (),
    device: str = "cpu",
    spec: Mapping | None = None,
    force: bool | Sequence[str] = False,
    meta: dict | None = None,
    train_data: TrainData | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Path]:
    """Run analyses on any model and save results + figures under ``out_dir``.

    Args:
        model: the model (moved to ``device``; left in eval mode).
        data: test images.
        train_data: augmented training batches, for analyses with ``SPLIT = "train"``
            (Hessian, landscape); without it those analyses are refused.
        out_dir: a run directory (``results/`` and ``figures/`` go inside).
        only: analysis names (comma-separated or a list); default all.
        sets: ``<analysis>.<field>=value`` overrides of the analysis configs.
        device: where to run.
        spec: block patterns for models that do not list their blocks.
        force: recompute results that already exist (all, or the named analyses).
        meta: extra context stored with each result (model name, checkpoint, ...).
        log: where progress lines go.

    Under torchrun every rank calls this with the same arguments: the analyses shard their
    work over the ranks, and rank 0 alone writes results and figures and logs.

    Returns:
        Analysis name -> path of its JSON result.
    """
    from .report.figures import render

    device = str(dist_utils.init(device))
    main = dist_utils.is_main()
    rd = RunDir(Path(out_dir))
    names = parse_only(only)
    configs = analysis_configs(names, sets, device)
    model = model.to(device).eval()
    done = {}
    for name in names:
        path = rd.results / f"{name}.json"
        redo = force if isinstance(force, bool) else name in force
        # rank 0 decides, so no rank skips an analysis the others run
        if dist_utils.broadcast_object(Result.exists(rd.results, name) and not redo):
            if main:
                log(f"{name}: exists, skipped ({path})")
            done[name] = path
            continue
        module = get_analysis(name)
        split = getattr(module, "SPLIT", "test")
        if split == "train" and train_data is None:
            raise VitscopeError(f"{name} needs training data: run it on a run directory")
        kwargs = {"workdir": rd.results} if getattr(module, "RESUMABLE", False) else {}
        inputs = train_data if split == "train" else data
        result = module.run(model, inputs, configs[name], spec=spec, **kwargs)
        if main:
            result.meta.update(meta or {})
            result.save(rd.results)
            for partial in rd.results.glob(f"{name}.partial.*"):  # superseded by the result
                partial.unlink()
            figs = render(result, rd.figures)
            figures = f"  figures: {', '.join(f.name for f in figs)}" if figs else ""
            log(f"{name}: {path}{figures}")
        dist_utils.barrier()  # the result is on disk before any rank goes on
        done[name] = path
    return done


def analyze(
    run_dir: str | Path,
    *,
    only: str | Sequence[str] | None = None,
    checkpoint: str | None = None,
    device: str = "cpu",
    sets: Sequence[str] = (),
    force: bool | Sequence[str] = False,
    log: Callable[[str], None] = print,
) -> dict[str, Path]:
    """Analyse a trained run on its own data (see :func:`analyze_model`).

    Each analysis runs on ``checkpoint`` if given, else on its module's
    ``DEFAULT_CHECKPOINT`` (``best`` for most; ``warmup`` for the Hessian, as in the paper),
    falling back to ``best`` when the run has no such snapshot. The checkpoint used is stored
    in each result's ``meta``. Under torchrun every rank calls it (see :func:`analyze_model`).
    """
    from .train import load_model, load_split
    from .train.trainer import build_augment, load_data

    device = str(dist_utils.init(device))
    rd = RunDir.existing(run_dir)
    names = parse_only(only)
    analysis_configs(names, sets, device)  # fail on bad values before loading anything
    by_ckpt: dict[str, list[str]] = {}
    for name in names:
        ckpt = checkpoint or getattr(get_analysis(name), "DEFAULT_CHECKPOINT", "best")
        if checkpoint is None and not rd.checkpoint(ckpt).is_file():
            ckpt = "best"
        by_ckpt.setdefault(ckpt, []).append(name)
    done: dict[str, Path] = {}
    test_data = train_data = None
    for ckpt, group in by_ckpt.items():
        model, cfg = load_model(run_dir, ckpt, device=device)
        if test_data is None:
            test_data = EvalData.from_image_data(load_split(cfg, train=False))
        if train_data is None and any(
            getattr(get_analysis(n), "SPLIT", "test") == "train" for n in group
        ):
            train_set, _, _ = load_data(cfg)
            train_data = TrainData(
                train_set.images,
                train_set.labels,
                build_augment(cfg, train_set.info),
                train_set.info.num_classes,
                cfg.train.weight_decay,
                to_dict(cfg.augment),
            )
        frac = cfg.data.fraction
        meta = {
            "model": cfg.model.name,
            "dataset": cfg.data.name,
            "fraction": frac,
            "checkpoint": ckpt,
            "run": str(run_dir),
            "label": cfg.model.name + (f" ({frac:.0%})" if frac < 1 else ""),
        }
        done.update(
            analyze_model(
                model,
                test_data,
                run_dir,
                train_data=train_data,
                only=group,
                sets=sets,
                device=device,
                force=force,
                meta=meta,
                log=log,
            )
        )
    return {n: done[n] for n in names}


def load_user_model(target: str, checkpoint: str | None = None) -> nn.Module:
    """``path/to/file.py:builder`` -> ``builder()``, with an optional state dict loaded.

    The checkpoint may be a raw ``state_dict`` or a dict holding one under ``model`` or
    ``state_dict``.
    """
    file, sep, func = target.rpartition(":")
    if not sep or not file or not func:
        raise VitscopeError(f"--model-file expects path/to/file.py:function, got {target!r}")
    path = Path(file)
    if not path.is_file():
        raise VitscopeError(f"model file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"vitscope_user_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    builder = getattr(module, func, None)
    if builder is None:
        raise VitscopeError(f"{path} has no function {func!r}")
    model = builder()
    if not isinstance(model, nn.Module):
        raise VitscopeError(f"{target} returned {type(model).__name__}, not an nn.Module")
    if checkpoint:
        from .train import load_checkpoint

        state = load_checkpoint(checkpoint)
        state = (
            state.get("model", state.get("state_dict", state)) if isinstance(state, dict) else state
        )
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            raise VitscopeError(f"checkpoint {checkpoint} does not fit {target}: {first}") from None
    return model


def parse_blocks_spec(text: str | None) -> dict | None:
    """The ``--blocks`` JSON mapping of kind -> pattern(s)."""
    if not text:
        return None
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as e:
        raise VitscopeError(f"--blocks is not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(spec, dict):
        raise VitscopeError('--blocks must be a JSON object like {"msa": "blocks.*.attn"}')
    return spec


# ---------------------------------------------------------------------------------------------
# vitscope reproduce: a preset's grid of runs -> every analysis -> one report


@dataclass(frozen=True)
class StudyConfig:
    """A study: models x data fractions, trained with one recipe, then analysed and reported."""

    name: str = "study"  # shown in the report
    description: str = ""  # what the study shows, its runtime and what to expect
    models: tuple[str, ...] = ("resnet_tiny", "vit_tiny")  # model registry keys
    fractions: tuple[float, ...] = (1.0,)  # class-balanced training fractions, one run each
    train_preset: str = "cpu"  # training recipe every run starts from (`vitscope list presets`)
    train: dict = field(default_factory=dict)  # RunConfig overrides for every run
    model_overrides: dict = field(default_factory=dict)  # model name -> RunConfig overrides
    fraction_overrides: dict = field(default_factory=dict)  # fraction -> RunConfig overrides
    analyses: dict = field(default_factory=dict)  # analysis name -> config fields; run in order
    # ablation runs (spec §7.4), under <study>/ablations/<name>-f<fraction>/: name -> RunConfig
    # overrides (with model.name and model.kwargs), plus optional `fractions` (default: the
    # study's) and `analyses` (a subset of the study's, default: all of them)
    ablations: dict = field(default_factory=dict)
    # the AlterNet build-up search, under <study>/buildup/ (BuildupConfig fields, plus
    # `fraction`); its candidates train with the study's recipe. Empty: no build-up.
    buildup: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.models:
            raise ConfigError("study.models must list at least one model")
        if not self.fractions or any(not 0 < f <= 1 for f in self.fractions):
            raise ConfigError(f"study.fractions must be in (0, 1], got {list(self.fractions)}")
        unknown = sorted(set(self.analyses) - set(ANALYSES))
        if unknown:
            raise ConfigError(
                f"study.analyses: unknown analysis {unknown[0]!r}; valid: {', '.join(ANALYSES)}"
            )
        from .models import MODELS

        for model in self.models:
            MODELS.get(model)  # unknown names raise with the valid ones
        odd = sorted(set(self.fraction_overrides) - set(self.fractions))
        if odd:
            raise ConfigError(
                f"study.fraction_overrides names {odd[0]!r}, which is not in study.fractions"
            )
        stray = sorted(set(self.model_overrides) - set(self.models))
        if stray:
            raise ConfigError(
                f"study.model_overrides names {stray[0]!r}, which is not in study.models"
            )
        for name, spec in self.ablations.items():
            if not isinstance(spec, dict) or "name" not in (spec.get("model") or {}):
                raise ConfigError(f"study.ablations.{name} needs model: {{name: ..., kwargs: ...}}")
            MODELS.get(spec["model"]["name"])
            extra = sorted(set(spec.get("analyses") or ()) - set(self.analyses))
            if extra:
                raise ConfigError(
                    f"study.ablations.{name}.analyses names {extra[0]!r}, which is not in "
                    "study.analyses"
                )
            if any(not 0 < f <= 1 for f in spec.get("fractions") or ()):
                raise ConfigError(f"study.ablations.{name}.fractions must be in (0, 1]")
        if self.buildup:
            self.buildup_config()  # bad fields raise here

    def run_name(self, model: str, fraction: float) -> str:
        return f"{model}-f{fraction:g}"

    def run_configs(self) -> dict[str, RunConfig]:
        """Run name -> resolved RunConfig, validated up front (before anything trains)."""
        return {
            self.run_name(model, fraction): self._resolve(
                fraction, self.model_overrides.get(model, {}), {"model": {"name": model}}
            )
            for fraction in self.fractions
            for model in self.models
        }

    def _overrides(self, fraction: float, *layers: dict) -> dict:
        """RunConfig overrides at ``fraction``: study, fraction, then ``layers``, in order."""
        overrides = merge(self.train, self.fraction_overrides.get(fraction, {}))
        for layer in layers:
            overrides = merge(overrides, layer)
        return merge(overrides, {"data": {"fraction": fraction}})

    def _resolve(self, fraction: float, *layers: dict) -> RunConfig:
        return resolve(preset=self.train_preset, overrides=self._overrides(fraction, *layers))

    def ablation_runs(self) -> dict[str, tuple[RunConfig, list[str]]]:
        """Ablation run name -> (resolved RunConfig, analyses to run on it)."""
        out = {}
        for name, spec in self.ablations.items():
            spec = dict(spec)
            fractions = spec.pop("fractions", None) or self.fractions
            analyses = list(spec.pop("analyses", None) or self.analyses)
            for fraction in fractions:
                base = self.model_overrides.get(spec["model"]["name"], {})
                out[self.run_name(name, fraction)] = (self._resolve(fraction, base, spec), analyses)
        return out

    def buildup_config(self):
        """The build-up search's :class:`~vitscope.buildup.BuildupConfig` (None if none)."""
        from .buildup import BuildupConfig

        if not self.buildup:
            return None
        spec = dict(self.buildup)
        fraction = spec.pop("fraction", 1.0)
        overrides = self._overrides(fraction, spec.pop("overrides", {}) or {})
        spec = {"train_preset": self.train_preset, **spec, "overrides": overrides}
        return from_dict(BuildupConfig, spec, "study.buildup")

    def analysis_sets(self) -> list[str]:
        """The analysis configs as ``--set``-style items."""
        return [
            f"{a}.{k}={json.dumps(v)}"
            for a, fields_ in self.analyses.items()
            for k, v in (fields_ or {}).items()
        ]


STEPS = ("train", "analyze", "buildup", "report")


def _study_dir():
    from importlib import resources

    return resources.files("vitscope") / "presets" / "studies"


def list_studies() -> list[str]:
    """Names of the shipped study presets (``configs/*.yaml``)."""
    return sorted(
        p.name[: -len(".yaml")] for p in _study_dir().iterdir() if p.name.endswith(".yaml")
    )


def load_study(preset: str) -> StudyConfig:
    """A study preset by name, or a path to a study YAML file."""
    path = Path(preset)
    if preset.endswith((".yaml", ".yml")) or path.is_file():
        data = load_yaml(path)
    elif preset in list_studies():
        data = load_yaml(Path(str(_study_dir() / f"{preset}.yaml")))
    else:
        raise ConfigError(f"unknown study preset {preset!r}; valid: {', '.join(list_studies())}")
    return from_dict(StudyConfig, data, "study")


#: fields a study may gain or change in an existing folder: their runs guard themselves
#: (a run directory or build-up search refuses a different config), the description is text
GROWABLE = ("description", "ablations", "buildup")


def _core(study: StudyConfig) -> dict:
    """What an existing study folder must agree on: runs, recipe and analysis settings."""
    return {k: v for k, v in to_dict(study).items() if k not in GROWABLE}


def reproduce(
    preset: str | StudyConfig,
    out: str | Path,
    *,
    force: Sequence[str] = (),
    device: str | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Run a whole study: train every run, run every analysis, build the report.

    Every step is skipped when its result exists (a finished run resumes to nothing, a
    finished analysis is not recomputed), so a killed study continues where it stopped.

    Args:
        preset: a study preset name (``vitscope list studies``), a YAML path, or a config.
        out: the study directory.
        force: steps to redo: ``train``, ``analyze`` (all analyses) or an analysis name.
        device: overrides ``train.device`` and the analyses' device.
        log: where progress lines go.

    Returns:
        The path of ``report.html``.
    """
    from .report import build_report
    from .train import train

    study = preset if isinstance(preset, StudyConfig) else load_study(preset)
    main = dist_utils.is_main()  # under torchrun every rank runs the study; rank 0 writes
    if not main:
        log = lambda line: None  # noqa: E731
    bad = sorted(set(force) - set(STEPS) - set(ANALYSES))
    if bad:
        raise ConfigError(
            f"--force {bad[0]!r}: valid steps are {', '.join(STEPS + tuple(ANALYSES))}"
        )
    root = Path(out)
    runs = {root / "runs" / k: (c, list(study.analyses)) for k, c in study.run_configs().items()}
    runs.update({root / "ablations" / k: v for k, v in study.ablation_runs().items()})
    if device:
        runs = {
            k: (replace(c, train=replace(c.train, device=device)), a) for k, (c, a) in runs.items()
        }
    bu_cfg = study.buildup_config()
    if bu_cfg is not None and device:
        bu_cfg = replace(bu_cfg, overrides=merge(bu_cfg.overrides, {"train": {"device": device}}))
    parse_only(list(study.analyses))
    analysis_configs(list(study.analyses), study.analysis_sets())
    saved = root / "study.yaml"
    if saved.is_file() and _core(from_dict(StudyConfig, load_yaml(saved), "study")) != _core(study):
        raise VitscopeError(f"{root} holds a different study; choose another --out")
    if main:
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(saved, dump_yaml(study))

    for i, (run_dir, (cfg, _)) in enumerate(runs.items(), 1):
        if "train" in force and (run_dir / "checkpoints").exists() and main:
            shutil.rmtree(run_dir)
        dist_utils.barrier()
        log(f"[{i}/{len(runs)}] train {run_dir.parent.name}/{run_dir.name}")
        train(cfg, run_dir)
    if study.analyses:
        redo = True if "analyze" in force else [a for a in study.analyses if a in force]
        for i, (run_dir, (_, names)) in enumerate(runs.items(), 1):
            log(f"[{i}/{len(runs)}] analyze {run_dir.parent.name}/{run_dir.name}")
            analyze(
                run_dir,
                only=names,
                sets=study.analysis_sets(),
                device=device or "cpu",
                force=redo,
                log=log,
            )
    if bu_cfg is not None:
        from .buildup import buildup

        if "buildup" in force and (root / "buildup").exists() and main:
            shutil.rmtree(root / "buildup")
        dist_utils.barrier()
        log(f"buildup from {bu_cfg.base}")
        buildup(bu_cfg, root / "buildup", log=log)
    report = build_report([root]) if main else root / "report.html"
    dist_utils.barrier()
    log(f"report: {report}")
    return report
