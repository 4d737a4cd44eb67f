"""Analysing one run or any model: load inputs, run each analysis, save results and figures.

``analyze`` is what ``vitscope analyze RUN_DIR`` calls: it loads the run's checkpoint and test
split, runs each requested analysis whose result is missing (or all with ``force``), saves the
results atomically under ``RUN_DIR/results`` and draws their figures under ``RUN_DIR/figures``.
``analyze_model`` does the same for any ``nn.Module`` and data.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields, replace
from pathlib import Path

import torch.nn as nn
import yaml

from . import distributed as dist_utils
from . import preempt
from .analyses import Analysis, EvalData, TrainData, analyses, get_analysis
from .analyses.store import PartialStore
from .config import ConfigError, from_dict, parse_overrides, to_dict
from .errors import VitscopeError
from .io import RunDir, writes_folder
from .results import Result, check_tag, config_dict, result_name


def analysis_configs(names: Sequence[str], sets: Sequence[str] = (), device: str = "cpu") -> dict:
    """Per-analysis Config objects from ``--set <analysis>.<field>=value`` items."""
    overrides = parse_overrides(list(sets))
    known = analyses()
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise ConfigError(f"--set {unknown[0]}.*: unknown analysis; valid: {', '.join(known)}")
    configs = {}
    for name in names:
        spec = get_analysis(name)
        cfg = from_dict(spec.config, overrides.get(name, {}), name)
        has_device = any(f.name == "device" for f in fields(cfg))
        configs[name] = replace(cfg, device=device) if has_device else cfg
    return configs


def parse_only(only: str | Sequence[str] | None) -> list[str]:
    """Analysis names from ``--only`` (comma-separated or a list); None: every analysis that
    runs by default (``Analysis.default``), in order."""
    if only is None:
        return [name for name, a in analyses().items() if a.default]
    names = [n.strip() for n in (only.split(",") if isinstance(only, str) else only) if n.strip()]
    for n in names:
        get_analysis(n)
    return names


def save_result(
    spec: Analysis, result: Result, rd: RunDir, meta: dict | None, tag: str | None = None
) -> list[Path]:
    """Rank 0: summary, meta, figures, then the result itself; partial files go last. With
    ``tag`` the result is saved as ``<analysis>-<tag>`` and its figures as ``<stem>-<tag>``,
    beside the untagged ones."""
    from .report.figures import render

    result.meta.update(meta or {})
    result.summary = spec.summarize(result)
    figures = spec.figures
    if tag:
        result.name = result_name(spec.name, tag)
        result.meta["tag"] = tag
        figures = tuple(replace(f, stem=f"{f.stem}-{tag}") for f in figures)
    figs = render(result, rd.figures, figures)
    result.figures = [f.name for f in figs]
    result.save(rd.results)
    PartialStore(rd.results, result.name).clear()  # superseded by the result
    return figs


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
    timings: dict[str, float] | None = None,
    tag: str | None = None,
) -> dict[str, Path]:
    """Run analyses on any model and save results + figures under ``out_dir``.

    Args:
        model: the model (moved to ``device``; left in eval mode). A model that does not
            list its units is wrapped as a :class:`~vitscope.foreign.ForeignModel` (curated
            rule, generic decomposition or ``spec``; inputs adapted, logits unwrapped).
        data: test images.
        train_data: augmented training batches, for analyses with ``split="train"``
            (Hessian, landscape, overfitting); without it those analyses are refused.
        out_dir: a run directory (``results/`` and ``figures/`` go inside).
        only: analysis names (comma-separated or a list); default all.
        sets: ``<analysis>.<field>=value`` overrides of the analysis configs.
        device: where to run.
        spec: block patterns for models that do not list their blocks.
        force: recompute results that already exist (all, or the named analyses).
        meta: extra context stored with each result (model name, checkpoint, ...).
        log: where progress lines go.
        timings: if given, receives the seconds each analysis computed here took (with its
            figures); skipped ones are not entered.
        tag: save each result as ``<analysis>-<tag>`` (figures ``<stem>-<tag>``), beside the
            untagged one: a second landscape (other directions, another endpoint) of the same
            run. Resumes, skips and ``force`` apply to the tagged result alone.

    Under torchrun every rank calls this with the same arguments: the analyses shard their
    work over the ranks, and rank 0 alone writes results and figures and logs.

    Returns:
        Analysis name -> path of its JSON result.
    """
    from .foreign import ForeignModel, wrap

    device = str(dist_utils.init(device))
    main = dist_utils.is_main()
    rd = RunDir(Path(out_dir))
    names = parse_only(only)
    configs = analysis_configs(names, sets, device)
    saved_as = {name: result_name(name, tag) for name in names}  # bad tags fail here
    model = wrap(model, spec=spec)  # a foreign model: its units, input and logits adapted
    if isinstance(model, ForeignModel):
        spec = None  # the wrapper applied it
        model.bind(data.mean, data.std)
        meta = {**model.info(), **(meta or {})}
    model = model.to(device).eval()
    _check_classes(model, data, train_data, names, device)
    done = {}
    for name in names:
        key = saved_as[name]
        path = rd.results / f"{key}.json"
        redo = force if isinstance(force, bool) else name in force
        analysis = get_analysis(name)
        # rank 0 decides, so no rank skips an analysis the others run
        saved = _finished(analysis, rd, log, key) if main and not redo else None
        if dist_utils.broadcast_object(saved is not None):
            if main:
                changed = _changed_settings(saved, configs[name])
                log(f"{key}: exists, skipped ({path})" if not changed else
                    f"{key}: exists with other settings ({changed}), skipped: add --force "
                    "to compute it again with these, or --tag NAME to keep both")  # fmt: skip
            done[name] = path
            continue
        if analysis.split == "train" and train_data is None:
            raise VitscopeError(f"{name} needs training data: run it on a run directory")
        inputs = train_data if analysis.split == "train" else data
        t0 = time.perf_counter()
        result = analysis.execute(model, inputs, configs[name], workdir=rd.results, blocks=spec,
                                  saved_as=key)  # fmt: skip
        if main:
            figs = save_result(analysis, result, rd, meta, tag)
            figures = f"  figures: {', '.join(f.name for f in figs)}" if figs else ""
            log(f"{key}: {path}{figures}")
        dist_utils.barrier()  # the result is on disk before any rank goes on
        done[name] = path
        if timings is not None:
            timings[name] = time.perf_counter() - t0
        if dist_utils.broadcast_object(preempt.requested()):  # rank 0 decides for all
            preempt.stop(f"{key} of {rd.root} (saved)")
    return done


def _finished(
    analysis: Analysis, rd: RunDir, log: Callable[[str], None], key: str
) -> Result | None:
    """The whole result ``key`` (``analysis``'s, perhaps tagged) that ``rd`` holds, or None.
    One that is unreadable (a torn or damaged file) or lacks a key its readers need is named
    in one line and computed again (its partial items, if any, are kept)."""
    if not Result.exists(rd.results, key):
        return None
    try:
        result = Result.load(rd.results, key)
    except VitscopeError as e:
        log(f"{key}: {str(e).split(';')[0]}; computing it again")
        return None
    missing = analysis.missing(result)
    if missing:
        log(f"{key}: {rd.results / key}.json lacks {', '.join(missing)} "
            "(damaged, edited or from another version); computing it again")  # fmt: skip
        return None
    return result


def _changed_settings(result: Result, cfg) -> str:
    """The settings in which ``cfg`` differs from those of the saved ``result`` (``field old
    → new``, at most three), or "". Neither the device nor a field left unset (None: resolved
    by the run, e.g. the run's weight decay) counts."""
    saved = result.config or {}
    diff = [f"{k}: {saved[k]!r} → {v!r}" for k, v in config_dict(cfg).items()
            if k != "device" and v is not None and k in saved and saved[k] != v]  # fmt: skip
    return ", ".join(diff[:3]) + (", ..." if len(diff) > 3 else "")


def _check_classes(model, data: EvalData, train_data, names, device: str) -> None:
    """Refuse analyses that score labels when the model's outputs cannot be the data's
    classes (a 1000-class ImageNet head on CIFAR-10); Fourier and variance need no labels."""
    import torch

    scored = [n for n in names if get_analysis(n).uses_labels]
    if not scored or len(data) == 0:
        return
    with torch.no_grad():
        x, _ = next(data.batches(1, device))
        outputs = model(x).shape[-1]
    classes = train_data.num_classes if train_data is not None else int(data.labels.max()) + 1
    if outputs != classes:
        raise VitscopeError(
            f"the model has {outputs} outputs but {data.name or 'the data'} has {classes} "
            f"classes, so {', '.join(scored)} would score nonsense; give the model "
            f"{classes} outputs (e.g. --model-kwargs '{{\"num_classes\": {classes}}}') or run "
            "--only fourier,variance"
        )


def _checkpoints(rd: RunDir, names: Sequence[str], checkpoint: str | None) -> dict[str, list]:
    """Checkpoint -> the analyses run on it: ``checkpoint``, else each one's default."""
    by_ckpt: dict[str, list[str]] = {}
    for name in names:
        ckpt = checkpoint or get_analysis(name).default_checkpoint
        if checkpoint is None and not rd.checkpoint(ckpt).is_file():
            ckpt = "best"
        by_ckpt.setdefault(ckpt, []).append(name)
    return by_ckpt


def train_data_of(cfg) -> TrainData:
    """The run's training subset with its training transform, as augmented batches."""
    from .data.stream import is_streamed
    from .train.trainer import build_augment, cpu_crop, load_data

    train_set, _, _ = load_data(cfg)
    streamed = is_streamed(train_set.images)
    return TrainData(
        train_set.images,
        train_set.labels,
        build_augment(cfg, train_set.info, streamed=streamed),
        train_set.info.num_classes,
        cfg.train.weight_decay,
        to_dict(cfg.augment),
        crop=cpu_crop(cfg) if streamed else None,
    )


def test_data_of(split, cfg, names: Sequence[str], sets: Sequence[str], device: str) -> EvalData:
    """The test split as the analyses read it. A streamed folder's first ``n`` images, where
    ``n`` is the most any of the test analyses ``names`` reads, are decoded once into memory
    when they fit in ``data.memory_limit_gb`` (the analyses pass over them tens of times);
    else they stay lazy and every pass decodes."""
    from .data.datasets import fits_in_memory
    from .data.stream import is_streamed

    data = EvalData.from_image_data(split)
    if not is_streamed(data.images):
        return data
    counts = [
        getattr(c, "num_images", None)
        for name, c in analysis_configs(names, sets, device).items()
        if get_analysis(name).split == "test"
    ]
    if not counts:
        return data
    n = len(data) if None in counts else min(len(data), max(counts))
    if not fits_in_memory(n, data.images.size, cfg.data.memory_limit_gb):
        return data
    return replace(data, images=data.images[:n].read(), labels=data.labels[:n],
                   files=data.files[:n])  # fmt: skip


def run_meta(
    cfg, run_dir: str | Path, ckpt: str | None, *, model: str | None = None,
    family: str | None = None,
) -> dict:  # fmt: skip
    """Context stored with each result of a run: model, family, dataset, checkpoint, label.

    ``model`` and ``family`` name a model the config does not (a foreign model)."""
    from .models import model_family

    frac = cfg.data.fraction
    model = model or cfg.model.name
    return {
        "model": model,
        "family": family or model_family(model),
        "dataset": cfg.data.name,
        "fraction": frac,
        "checkpoint": ckpt,
        "run": str(run_dir),
        "label": model + (f" ({frac:.0%})" if frac < 1 else ""),
    }


@writes_folder("run_dir")
def analyze(
    run_dir: str | Path,
    *,
    only: str | Sequence[str] | None = None,
    checkpoint: str | None = None,
    device: str = "cpu",
    sets: Sequence[str] = (),
    force: bool | Sequence[str] = False,
    log: Callable[[str], None] = print,
    timings: dict[str, float] | None = None,
    tag: str | None = None,
) -> dict[str, Path]:
    """Analyse a trained run on its own data (see :func:`analyze_model`; ``timings`` also
    receives ``load``, the seconds spent loading checkpoints and data; ``tag`` saves the
    results beside the untagged ones).

    Each analysis runs on ``checkpoint`` if given, else on its declared
    ``default_checkpoint`` (``best`` for most; ``warmup`` for the Hessian, as in the paper),
    falling back to ``best`` when the run has no such snapshot. The checkpoint used is stored
    in each result's ``meta``. Under torchrun every rank calls it (see :func:`analyze_model`).
    """
    from .train import load_model, load_split

    device = str(dist_utils.init(device))
    rd = RunDir.existing(run_dir)
    check_tag(tag)  # before anything loads
    record = _foreign_record(rd)
    if record is not None:  # analysed by name earlier: the same model, data and recipe again
        return analyze_foreign(
            foreign_from_record(record),
            run_dir,
            data=record["data"]["name"],
            data_root=record["data"].get("root"),
            fraction=float(record["data"].get("fraction") or 1.0),
            preset=record.get("preset") or "cpu",
            only=only,
            sets=sets,
            device=device,
            force=force,
            record={k: v for k, v in record.items() if k != "data"},
            log=log,
            tag=tag,
        )
    names = parse_only(only)
    analysis_configs(names, sets, device)  # fail on bad values before loading anything
    done: dict[str, Path] = {}
    test_data = train_data = None
    for ckpt, group in _checkpoints(rd, names, checkpoint).items():
        t0 = time.perf_counter()
        model, cfg = load_model(run_dir, ckpt, device=device)
        if test_data is None:
            test_data = test_data_of(load_split(cfg, train=False), cfg, names, sets, device)
        if train_data is None and any(get_analysis(n).split == "train" for n in group):
            train_data = train_data_of(cfg)
        if timings is not None:
            timings["load"] = timings.get("load", 0.0) + time.perf_counter() - t0
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
                meta=run_meta(cfg, run_dir, ckpt),
                log=log,
                timings=timings,
                tag=tag,
            )
        )
    return {n: done[n] for n in names}


@writes_folder("out_dir")
def analyze_foreign(
    model: nn.Module,
    out_dir: str | Path,
    *,
    data: str,
    data_root: str | None = None,
    fraction: float = 1.0,
    preset: str = "cpu",
    only: str | Sequence[str] | None = None,
    sets: Sequence[str] = (),
    device: str = "cpu",
    force: bool | Sequence[str] = False,
    spec: Mapping | None = None,
    record: dict | None = None,
    log: Callable[[str], None] = print,
    tag: str | None = None,
) -> dict[str, Path]:
    """Every analysis on a model vitscope did not train (timm, torchvision, HF, your own).

    The test split of ``data`` feeds the test analyses; the curvature analyses (overfitting,
    landscape, Hessian) take the training split (``fraction`` of it, class-balanced) with the
    augmentation and weight decay of the training recipe ``preset``, which each result states.
    ``out_dir`` becomes a run directory like a trained run's (``config.yaml``, ``results/``,
    ``figures/``), so ``vitscope report`` and ``vitscope compare`` put it beside vitscope's
    own runs. Re-running the same command skips finished results and resumes partial ones.
    """
    from .config import resolve
    from .foreign import ForeignModel, wrap
    from .io import atomic_write_text
    from .train import load_split

    names = parse_only(only)
    analysis_configs(names, sets, device)  # fail on bad values before loading anything
    check_tag(tag)
    cfg = resolve(preset=preset, overrides={"data": {"name": data, "root": data_root,
                                                     "fraction": fraction}})  # fmt: skip
    test = load_split(cfg, train=False)
    model = wrap(model, spec=spec)
    info = model.info() if isinstance(model, ForeignModel) else {"model": type(model).__name__}
    rd = RunDir(Path(out_dir))
    config = {
        "model": {"name": info["model"], "kwargs": dict((record or {}).get("model_kwargs") or {})},
        "data": {"name": data, "fraction": fraction, "root": data_root},
        "foreign": {**(record or {}), **info, "preset": preset},
    }
    text = yaml.safe_dump(config, sort_keys=False)
    if rd.config.is_file():
        old = yaml.safe_load(rd.config.read_text()) or {}
        same_model = (old.get("foreign") or {}).get("model") == info["model"]
        if not same_model or old.get("data") != config["data"]:
            raise VitscopeError(
                f"{rd.root} holds results of another model or dataset ({rd.config}); "
                "choose another --out"
            )
    if dist_utils.is_main():
        rd.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(rd.config, text)
    needs_train = any(get_analysis(n).split == "train" for n in names)
    meta = run_meta(cfg, out_dir, (record or {}).get("weights"), model=info["model"],
                    family=info.get("family", "other"))  # fmt: skip
    return analyze_model(
        model,
        test_data_of(test, cfg, names, sets, device),
        out_dir,
        train_data=train_data_of(cfg) if needs_train else None,
        only=names,
        sets=sets,
        device=device,
        force=force,
        meta=meta,
        log=log,
        tag=tag,
    )


def _foreign_record(rd: RunDir) -> dict | None:
    """The ``foreign:`` record of a run directory made by :func:`analyze_foreign`, else None."""
    try:
        cfg = yaml.safe_load(rd.config.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    foreign = cfg.get("foreign") if isinstance(cfg, dict) else None
    if not isinstance(foreign, dict):
        return None
    return {**foreign, "data": cfg.get("data") or {}}


def load_user_model(target: str, checkpoint: str | None = None) -> nn.Module:
    """``path/to/file.py:builder`` -> ``builder()``, with an optional state dict loaded.

    The checkpoint is read as :func:`vitscope.foreign.load_weights` reads ``--weights``: a
    raw ``state_dict`` or a dict holding one under ``model``, ``state_dict``,
    ``model_state_dict`` or ``module``, loaded strictly.
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
        from .foreign import load_weights

        load_weights(model, checkpoint, target)
    return model


def parse_json_option(text: str | None, flag: str, example: str = '{"num_classes": 10}') -> dict:
    """A JSON object given on the command line (``--model-kwargs``, ``--blocks``); empty when
    not given."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise VitscopeError(f"{flag} is not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(value, dict):
        raise VitscopeError(f"{flag} must be a JSON object like {example}")
    return value


def foreign_from_record(record: Mapping) -> nn.Module:
    """The model a record names: ``source`` (``timm``, ``torchvision``, ``hf``, ``file``),
    ``name``, ``weights``, ``model_kwargs``, ``img_size``, ``mean``, ``std``, ``blocks``. The
    CLI's flags make one; a foreign run directory's ``config.yaml`` keeps it (``foreign:``)."""
    from .foreign import ForeignModel, load_foreign

    source, name = record.get("source"), record.get("name")
    opts = {k: record.get(k) for k in ("img_size", "mean", "std")}
    if source == "file":
        if record.get("model_kwargs"):
            raise VitscopeError("--model-kwargs is for --timm/--torchvision/--hf models")
        net = load_user_model(name, record.get("weights"))
        if hasattr(net, "vitscope_blocks"):
            return net
        return ForeignModel(net, name=name, source="file", spec=record.get("blocks"), **opts)
    return load_foreign(source, name, weights=record.get("weights"),
                        model_kwargs=record.get("model_kwargs"), spec=record.get("blocks"),
                        **opts)  # fmt: skip


def parse_blocks_spec(text: str | None) -> dict | None:
    """The ``--blocks`` JSON mapping of kind -> pattern(s); None when not given."""
    return parse_json_option(text, "--blocks", '{"msa": "blocks.*.attn"}') if text else None


__all__ = [
    "analysis_configs",
    "analyze",
    "analyze_foreign",
    "analyze_model",
    "load_user_model",
    "parse_blocks_spec",
    "parse_only",
]
