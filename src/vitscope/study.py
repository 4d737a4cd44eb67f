"""A study: models x data fractions (and ablations, a build-up), trained, analysed, reported.

``reproduce`` is what ``vitscope reproduce`` calls; every step is skipped when its result
exists, so a killed study continues where it stopped. Analysing one run is
:mod:`vitscope.analyze`.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import distributed as dist_utils
from .analyses import analyses, load_plugins
from .config import (
    ConfigError,
    RunConfig,
    RunOverrides,
    dump_yaml,
    from_dict,
    load_yaml,
    merge,
    resolve,
    to_dict,
)
from .errors import VitscopeError
from .io import atomic_write_json, atomic_write_text, writes_folder
from .run_analyses import analysis_configs, analyze


@dataclass(frozen=True)
class Ablation(RunOverrides):
    """Extra runs of a model variant (``docs/methods/alternet.md``), under
    ``<study>/ablations/<name>-f<fraction>/``: RunConfig overrides (``model`` must name the
    model, with its ``kwargs``) on top of the study's, plus where and what to run."""

    fractions: tuple[float, ...] = ()  # default: the study's fractions
    analyses: tuple[str, ...] = ()  # a subset of the study's analyses; default: all of them

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.model.get("name"), str):
            raise ConfigError("needs model: {name: ..., kwargs: ...}")
        if any(not 0 < f <= 1 for f in self.fractions):
            raise ConfigError("fractions must be in (0, 1]")

    def overrides(self) -> dict:
        return RunOverrides(self.data, self.augment, self.model, self.train).as_dict()


@dataclass(frozen=True)
class StudyConfig:
    """A study: models x data fractions, trained with one recipe, then analysed and reported.

    Every field is typed and validated here, before anything trains: run overrides against
    the RunConfig sections, analysis settings against each analysis' Config, model names
    against the registry, the build-up against BuildupConfig.
    """

    name: str = "study"  # shown in the report
    description: str = ""  # what the study shows, its runtime and what to expect
    models: tuple[str, ...] = ("resnet_tiny", "vit_tiny")  # model registry keys
    fractions: tuple[float, ...] = (1.0,)  # class-balanced training fractions, one run each
    # training seeds (train.seed), one run per (model, fraction, seed), named <run>-s<seed>;
    # the report's intervals go over them. Empty: one run with the recipe's seed, no suffix
    seeds: tuple[int, ...] = ()
    train_preset: str = "cpu"  # training recipe every run starts from (`vitscope list presets`)
    # RunConfig overrides for every run, by section (data, augment, model, train); older
    # study files call this `train`
    run: RunOverrides = field(default_factory=RunOverrides)
    model_overrides: dict[str, RunOverrides] = field(default_factory=dict)  # model -> overrides
    # fraction -> the models that run at it (default: every model); fewer, better-trained runs
    fraction_models: dict[float, tuple[str, ...]] = field(default_factory=dict)
    fraction_overrides: dict[float, RunOverrides] = field(default_factory=dict)  # fraction -> ...
    analyses: dict[str, dict] = field(default_factory=dict)  # name -> Config fields; in order
    ablations: dict[str, Ablation] = field(default_factory=dict)  # name -> ablation runs
    # the AlterNet build-up search, under <study>/buildup/ (BuildupConfig fields, plus
    # `fraction`); its candidates train with the study's recipe. Empty: no build-up.
    buildup: dict = field(default_factory=dict)
    # third-party analysis modules to load before anything runs (see docs/plugins.md)
    plugins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        load_plugins(self.plugins)
        self._typed()
        if not self.models:
            raise ConfigError("study.models must list at least one model")
        if not self.fractions or any(not 0 < f <= 1 for f in self.fractions):
            raise ConfigError(f"study.fractions must be in (0, 1], got {list(self.fractions)}")
        if any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in self.seeds):
            raise ConfigError(f"study.seeds must be integers >= 0, got {list(self.seeds)}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"study.seeds lists a seed twice: {list(self.seeds)}")
        from .models import MODELS

        for model in self.models:
            MODELS.get(model)  # unknown names raise with the valid ones
        _subset(self.fraction_overrides, self.fractions, "fraction_overrides", "study.fractions")
        _subset(self.fraction_models, self.fractions, "fraction_models", "study.fractions")
        for fraction, models in self.fraction_models.items():
            where = f"fraction_models.{fraction:g}"
            if not models:
                raise ConfigError(f"study.{where} must list at least one model")
            _subset(dict.fromkeys(models), self.models, where, "study.models")
        _subset(self.model_overrides, self.models, "model_overrides", "study.models")
        analysis_configs(list(self.analyses), self.analysis_sets())  # bad settings raise
        for name, ablation in self.ablations.items():
            MODELS.get(ablation.model["name"])
            where = f"study.ablations.{name}.analyses"
            _subset(dict.fromkeys(ablation.analyses), self.analyses, where, "study.analyses")
        if self.buildup:
            self.buildup_config()  # bad fields raise here

    def _typed(self) -> None:
        """Plain mappings (a config built in Python) become the typed sections."""
        typed = {
            "run": self.run if isinstance(self.run, RunOverrides) else _layer(self.run, "run"),
            "model_overrides": _layers(self.model_overrides, "model_overrides", RunOverrides),
            "fraction_overrides": _layers(
                self.fraction_overrides, "fraction_overrides", RunOverrides
            ),
            "ablations": _layers(self.ablations, "ablations", Ablation),
        }
        for key, value in typed.items():
            object.__setattr__(self, key, value)

    def run_name(self, model: str, fraction: float, seed: int | None = None) -> str:
        return f"{model}-f{fraction:g}" + ("" if seed is None else f"-s{seed}")

    def _seeds(self) -> tuple[int | None, ...]:
        return self.seeds or (None,)

    @staticmethod
    def _seed_layer(seed: int | None) -> dict:
        return {} if seed is None else {"train": {"seed": seed}}

    def run_configs(self) -> dict[str, RunConfig]:
        """Run name -> resolved RunConfig, validated up front (before anything trains)."""
        return {
            self.run_name(model, fraction, seed): self._resolve(
                fraction,
                self._model_layer(model),
                {"model": {"name": model}},
                self._seed_layer(seed),
            )
            for fraction in self.fractions
            for model in self.models_at(fraction)
            for seed in self._seeds()
        }

    def models_at(self, fraction: float) -> tuple[str, ...]:
        """The models that run at ``fraction``, in ``models`` order."""
        chosen = self.fraction_models.get(fraction)
        return self.models if chosen is None else tuple(m for m in self.models if m in chosen)

    def _model_layer(self, model: str) -> dict:
        layer = self.model_overrides.get(model)
        return layer.as_dict() if layer is not None else {}

    def _overrides(self, fraction: float, *layers: dict) -> dict:
        """RunConfig overrides at ``fraction``: study, fraction, then ``layers``, in order."""
        at = self.fraction_overrides.get(fraction)
        overrides = merge(self.run.as_dict(), at.as_dict() if at is not None else {})
        for layer in layers:
            overrides = merge(overrides, layer)
        return merge(overrides, {"data": {"fraction": fraction}})

    def _resolve(self, fraction: float, *layers: dict) -> RunConfig:
        return resolve(preset=self.train_preset, overrides=self._overrides(fraction, *layers))

    def ablation_runs(self) -> dict[str, tuple[RunConfig, list[str]]]:
        """Ablation run name -> (resolved RunConfig, analyses to run on it)."""
        out = {}
        for name, ablation in self.ablations.items():
            names = list(ablation.analyses or self.analyses)
            base = self._model_layer(ablation.model["name"])
            for fraction in ablation.fractions or self.fractions:
                for seed in self._seeds():
                    cfg = self._resolve(
                        fraction, base, ablation.overrides(), self._seed_layer(seed)
                    )
                    out[self.run_name(name, fraction, seed)] = (cfg, names)
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


def _layer(value: object, where: str, cls: type = RunOverrides):
    """``value`` as ``cls``; errors name the study field they come from."""
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"study.{where} must be a mapping, got {value!r}")
    try:
        return from_dict(cls, value)
    except ConfigError as e:
        raise ConfigError(f"study.{where}: {e}") from None


def _layers(mapping: dict, where: str, cls: type) -> dict:
    if not isinstance(mapping, dict):
        raise ConfigError(f"study.{where} must be a mapping, got {mapping!r}")
    return {k: _layer(v, f"{where}.{k}", cls) for k, v in mapping.items()}


def _subset(keys: dict, valid, where: str, what: str) -> None:
    odd = sorted(set(keys) - set(valid), key=str)
    if odd:
        raise ConfigError(f"study.{where} names {odd[0]!r}, which is not in {what}")


def upgrade(data: dict) -> dict:
    """A study mapping in the current layout: the old ``train:`` key is now ``run:``."""
    if isinstance(data, dict) and "train" in data and "run" not in data:
        data = {("run" if k == "train" else k): v for k, v in data.items()}
    return data


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
    return from_dict(StudyConfig, upgrade(data), "study")


#: fields a study may gain or change in an existing folder: their runs guard themselves
#: (a run directory or build-up search refuses a different config; a new seed is new runs),
#: the description is text
GROWABLE = ("description", "ablations", "buildup", "seeds")


def _core(study: StudyConfig) -> dict:
    """What an existing study folder must agree on: runs, recipe and the settings of the
    analyses it ran (``analyses`` may gain new ones: they only add results)."""
    return {k: v for k, v in to_dict(study).items() if k not in (*GROWABLE, "analyses")}


def _same_study(before: StudyConfig, study: StudyConfig) -> str:
    """Why ``study`` cannot continue the folder of ``before`` ("" if it can)."""
    a, b = _core(before), _core(study)
    keys = sorted(k for k in {*a, *b} if a.get(k) != b.get(k))
    if keys:
        return f"its {', '.join(keys)} differ"
    old, new = to_dict(before).get("analyses", {}), to_dict(study).get("analyses", {})
    changed = sorted(k for k in old if old[k] != new.get(k))
    return (
        f"analyses {', '.join(changed)} were run with other settings or dropped" if changed else ""
    )


def _runs(study: StudyConfig, root: Path, device: str | None) -> dict[Path, tuple]:
    """Run directory -> (resolved RunConfig, analyses): the main runs, then the ablations."""
    runs = {root / "runs" / k: (c, list(study.analyses)) for k, c in study.run_configs().items()}
    runs.update({root / "ablations" / k: v for k, v in study.ablation_runs().items()})
    if not device:
        return runs
    return {k: (replace(c, train=replace(c.train, device=device)), a) for k, (c, a) in runs.items()}


def _claim_folder(study: StudyConfig, root: Path, main: bool) -> None:
    """Refuse a folder that holds another study; write ``study.yaml`` (rank 0)."""
    saved = root / "study.yaml"
    if saved.is_file():
        before = from_dict(StudyConfig, upgrade(load_yaml(saved)), "study")
        why = _same_study(before, study)
        if why:
            raise VitscopeError(f"{root} holds a different study ({why}); choose another --out")
    if main:
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(saved, dump_yaml(study))


def _train_all(runs: dict, force: Sequence[str], main: bool, log: Callable, times: dict) -> None:
    from .train import train

    for i, (run_dir, (cfg, _)) in enumerate(runs.items(), 1):
        if "train" in force and (run_dir / "checkpoints").exists() and main:
            shutil.rmtree(run_dir)
        dist_utils.barrier()
        log(f"[{i}/{len(runs)}] train {run_dir.parent.name}/{run_dir.name}")
        t0 = time.perf_counter()
        train(cfg, run_dir)
        times.setdefault(run_dir.name, {})["train"] = time.perf_counter() - t0


def _analyze_all(
    study, runs: dict, force: Sequence[str], device: str | None, log, times: dict
) -> None:
    redo = True if "analyze" in force else [a for a in study.analyses if a in force]
    for i, (run_dir, (_, names)) in enumerate(runs.items(), 1):
        log(f"[{i}/{len(runs)}] analyze {run_dir.parent.name}/{run_dir.name}")
        sets = study.analysis_sets()
        analyze(run_dir, only=names, sets=sets, device=device or "cpu", force=redo, log=log,
                timings=times.setdefault(run_dir.name, {}))  # fmt: skip


def time_table(times: dict[str, dict[str, float]], total: float) -> str:
    """Where a ``reproduce`` call's time went: per run its training and each analysis (a
    step done by an earlier call shows as ``-``), then the build-up and the report."""
    steps = ["train", "load"] + sorted(
        {k for t in times.values() for k in t} - {"train", "load", "buildup", "report"}
    )
    steps = [s for s in steps if any(s in t for t in times.values())]
    rows = {k: v for k, v in times.items() if k not in ("buildup", "report")}
    width = max([len("run"), *map(len, times)])
    lines = [f"time (s) of this call, {total:.0f} s in all:",
             " ".join([f"{'run':{width}s}", *(f"{s:>10.10s}" for s in steps)])]  # fmt: skip
    for run, t in rows.items():
        cells = [f"{t[s]:10.1f}" if s in t else f"{'-':>10s}" for s in steps]
        lines.append(" ".join([f"{run:{width}s}", *cells]))
    for step in ("buildup", "report"):
        if step in times:
            lines.append(f"{step:{width}s} {times[step][step]:10.1f}")
    return "\n".join(lines)


def _buildup(study, root: Path, force, device: str | None, main: bool, log: Callable) -> None:
    from .buildup import buildup

    cfg = study.buildup_config()
    if device:
        cfg = replace(cfg, overrides=merge(cfg.overrides, {"train": {"device": device}}))
    if "buildup" in force and (root / "buildup").exists() and main:
        shutil.rmtree(root / "buildup")
    dist_utils.barrier()
    log(f"buildup from {cfg.base}")
    buildup(cfg, root / "buildup", log=log)


@writes_folder("out")
def reproduce(
    preset: str | StudyConfig,
    out: str | Path,
    *,
    force: Sequence[str] = (),
    device: str | None = None,
    seeds: Sequence[int] | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Run a whole study: train every run, run every analysis, build the report.

    Every step is skipped when its result exists (a finished run resumes to nothing, a
    finished analysis is not recomputed), so a killed study continues where it stopped.
    The call ends by writing ``timings.json`` (where its time went) into ``out``.

    Args:
        preset: a study preset name (``vitscope list studies``), a YAML path, or a config.
        out: the study directory.
        force: steps to redo: ``train``, ``analyze`` (all analyses) or an analysis name.
        device: overrides ``train.device`` and the analyses' device.
        seeds: overrides the study's ``seeds`` (one run per model, fraction and seed).
        log: where progress lines go.

    Returns:
        The path of ``report.html``.
    """
    from .report import build_report

    study = preset if isinstance(preset, StudyConfig) else load_study(preset)
    if seeds is not None:
        study = replace(study, seeds=tuple(seeds))
    main = dist_utils.is_main()  # under torchrun every rank runs the study; rank 0 writes
    if not main:
        log = lambda line: None  # noqa: E731
    bad = sorted(set(force) - set(STEPS) - set(analyses()))
    if bad:
        raise ConfigError(
            f"--force {bad[0]!r}: valid steps are {', '.join(STEPS + tuple(analyses()))}"
        )
    root = Path(out)
    start = time.perf_counter()
    times: dict[str, dict[str, float]] = {}
    runs = _runs(study, root, device)
    _claim_folder(study, root, main)
    _train_all(runs, force, main, log, times)
    if study.analyses:
        _analyze_all(study, runs, force, device, log, times)
    if study.buildup:
        t0 = time.perf_counter()
        _buildup(study, root, force, device, main, log)
        times["buildup"] = {"buildup": time.perf_counter() - t0}
    t0 = time.perf_counter()
    report = build_report([root]) if main else root / "report.html"
    times["report"] = {"report": time.perf_counter() - t0}
    dist_utils.barrier()
    total = time.perf_counter() - start
    if main:  # the table's numbers, for scripts (benchmarks/study_stages.py)
        atomic_write_json(root / "timings.json", {"seconds": total, "steps": times})
    log(time_table(times, total))
    log(f"report: {report}")
    return report
