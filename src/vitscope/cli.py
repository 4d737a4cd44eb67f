"""The ``vitscope`` command: a table of subcommands over the public Python API.

Each handler parses, calls one public function and prints where the results went; it holds
no logic of its own. A :class:`~vitscope.errors.VitscopeError` becomes ``error: <message>``
on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from . import preempt
from .errors import VitscopeError


def _plugins(handler: Callable[[argparse.Namespace], int]):
    """Load the ``--plugin`` modules (third-party analyses) before the command runs."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        from .analyses import load_plugins

        load_plugins(getattr(args, "plugin", None) or [])
        return handler(args)

    return run


def _plugin_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="load a third-party analysis module first (repeatable; see docs/plugins.md)",
    )


@_plugins
def _cmd_list(args: argparse.Namespace) -> int:
    if args.what == "models":
        from .models import list_models

        names = list_models()
    elif args.what == "datasets":
        from .data import list_datasets

        names = list_datasets()
    elif args.what == "studies":
        from .study import list_studies

        names = list_studies()
    elif args.what == "analyses":
        from .analyses import analyses

        for name, spec in analyses().items():
            print(f"{name:12s} {spec.description}")
        return 0
    else:
        from .config import list_presets, preset_description

        for name in list_presets():
            first = preset_description(name).split(". ")[0]
            print(f"{name:12s} {first}")
        return 0
    print("\n".join(names))
    return 0


def _train_overrides(args: argparse.Namespace) -> dict:
    """The named flags of ``vitscope train`` as a nested config mapping."""
    flags = {
        ("model", "name"): args.model,
        ("data", "name"): args.data,
        ("data", "root"): args.data_root,
        ("data", "fraction"): args.fraction,
        ("train", "epochs"): args.epochs,
        ("train", "device"): args.device,
        ("train", "seed"): args.seed,
        ("train", "amp"): args.amp,
        ("train", "compile"): args.compile or None,
        ("train", "channels_last"): args.channels_last or None,
    }
    return _nest(flags, args.no_progress)


def _nest(flags: dict, no_progress: bool) -> dict:
    """``{(section, key): value}`` flags (None = not given) as a nested config mapping."""
    out: dict = {}
    for (section, key), value in flags.items():
        if value is not None:
            out.setdefault(section, {})[key] = value
    if no_progress:
        out.setdefault("train", {})["progress"] = False
    return out


def _say(*lines: str) -> None:
    """Print on rank 0 only: under torchrun every rank runs the command."""
    if os.environ.get("RANK", "0") == "0":
        print(*lines, sep="\n")


def _distributed(handler: Callable[[argparse.Namespace], int]):
    """Run a long command inside a torchrun process group (one process without torchrun)."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        from . import distributed

        with distributed.session(getattr(args, "device", None) or "cpu"):
            return handler(args)

    return run


@_distributed
def _cmd_train(args: argparse.Namespace) -> int:
    from .config import resolve
    from .train import train

    if args.dry_run:
        return _dry_run_train(args)
    if args.resume:
        given = (args.model, args.data, args.fraction, args.epochs, args.config, args.amp)
        if any(v is not None for v in given) or args.set or args.compile or args.channels_last:
            raise VitscopeError(
                "--resume continues a run with its saved config; drop the other options"
            )
        result = train(None, args.resume, resume=True)
    else:
        if args.out is None:
            raise VitscopeError("vitscope train needs --out DIR (or --resume DIR)")
        cfg = resolve(
            preset=args.preset,
            config_file=args.config,
            overrides=_train_overrides(args),
            sets=args.set,
        )
        result = train(cfg, args.out)
    last, best = result.last, result.best
    _say(
        f"test accuracy {last['test_acc']:.4f}  NLL {last['test_nll']:.4f}  "
        f"ECE {last['test_ece']:.4f}  (best {best['acc']:.4f} at epoch {best['epoch']})",
        f"run: {result.run_dir}",
    )
    return 0


def _cmd_fetch(args: argparse.Namespace) -> int:
    from .data import load_dataset

    for train in (True, False):
        data = load_dataset(args.dataset, train=train, root=args.data_root, download=True)
    print(f"{args.dataset}: {len(data)} test images present ({data.info.num_classes} classes)")
    return 0


@_distributed
def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .train import evaluate_run

    metrics = evaluate_run(args.run_dir, args.checkpoint, device=args.device)
    _say(
        "  ".join(
            f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()
        ),
        f"results: {args.run_dir}/results/evaluate_{args.checkpoint}.json",
    )
    return 0


@_plugins
def _cmd_analyze(args: argparse.Namespace) -> int:
    from . import distributed as dist_utils

    # under torchrun every rank runs its share of each analysis; rank 0 writes and prints
    with dist_utils.session(args.device) as device:
        out, done = _analyze(args, str(device))
        main = dist_utils.is_main()
    if main:
        print(f"results: {out}/results ({', '.join(Path(p).stem for p in done.values())})")
    return 0


def _foreign_model(args: argparse.Namespace):
    """The model named by ``--timm``/``--torchvision``/``--hf``/``--model-file``, or None;
    returns ``(model, record)`` where record is what reloads it."""
    from . import run_analyses as study

    given = [(s, getattr(args, s)) for s in ("timm", "torchvision", "hf") if getattr(args, s)]
    if args.model_file:
        given.append(("file", args.model_file))
    if not given:
        return None, None
    if len(given) > 1:
        raise VitscopeError("give one of --timm, --torchvision, --hf, --model-file")
    source, name = given[0]
    if source != "file" and getattr(args, "checkpoint", None):
        raise VitscopeError(f"--{source} models take their weights from --weights FILE")
    weights = args.weights or (args.checkpoint if source == "file" else None)
    record = {
        "source": source,
        "name": name,
        "weights": weights,
        "model_kwargs": study.parse_json_option(args.model_kwargs, "--model-kwargs"),
        "img_size": args.img_size,
        "mean": _floats(args.mean, "--mean"),
        "std": _floats(args.std, "--std"),
        "blocks": study.parse_blocks_spec(args.blocks),
    }
    return study.foreign_from_record(record), record


def _floats(text: str | None, flag: str) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise VitscopeError(f"{flag} expects comma-separated numbers, got {text!r}") from None


def _analyze(args: argparse.Namespace, device: str) -> tuple[str, dict]:
    from . import run_analyses as study

    model, record = _foreign_model(args)
    if model is not None:
        if not (args.data and args.out):
            raise VitscopeError("a --timm/--torchvision/--hf/--model-file model needs --data "
                                "DATASET and --out DIR")  # fmt: skip
        done = study.analyze_foreign(
            model,
            args.out,
            data=args.data,
            data_root=args.data_root,
            fraction=args.fraction if args.fraction is not None else 1.0,
            preset=args.preset,
            only=args.only,
            sets=args.set,
            device=device,
            force=args.force,
            record=record,
            tag=args.tag,
        )
        return args.out, done
    if args.run_dir is None:
        raise VitscopeError(
            "vitscope analyze needs RUN_DIR (or --timm/--torchvision/--hf/--model-file "
            "with --data and --out)"
        )
    done = study.analyze(
        args.run_dir,
        only=args.only,
        checkpoint=args.checkpoint,
        device=device,
        sets=args.set,
        force=args.force,
        tag=args.tag,
    )
    return args.run_dir, done


@_plugins
def _cmd_blocks(args: argparse.Namespace) -> int:
    from .foreign import describe_table

    model, _ = _foreign_model(args)
    if model is None:
        if not args.model:
            raise VitscopeError(
                "vitscope blocks needs --timm/--torchvision/--hf/--model-file or --model NAME"
            )
        from .models import create_model

        model = create_model(args.model, num_classes=10, img_size=args.img_size or 32)
    print(describe_table(model, args.img_size))
    return 0


@_plugins
def _cmd_compare(args: argparse.Namespace) -> int:
    from .report.compare import compare_runs

    path = compare_runs(args.analysis, args.run_dirs, args.out, tag=args.tag)
    print(f"figure: {path}")
    return 0


@_plugins
@_distributed
def _dry_run_train(args: argparse.Namespace) -> int:
    """``train --dry-run``: the resolved config as ``config.yaml`` would hold it, or the one
    line that says what is wrong with it."""
    from .config import dump_yaml, resolve
    from .data import DATASETS
    from .models import MODELS

    if args.resume:
        raise VitscopeError("--dry-run checks a new run's config; drop --resume")
    cfg = resolve(preset=args.preset, config_file=args.config, overrides=_train_overrides(args),
                  sets=args.set)  # fmt: skip
    MODELS.get(cfg.model.name)  # unknown names: one line listing the valid ones
    DATASETS.get(cfg.data.name)
    print(dump_yaml(cfg), end="")
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from .study import reproduce

    force = [f.strip() for f in (args.force or "").split(",") if f.strip()]
    seeds = None if args.seeds is None else _seed_list(args.seeds)
    if args.dry_run:
        return _dry_run_study(args.preset, seeds)
    if args.out is None:
        raise VitscopeError("vitscope reproduce needs --out DIR (or --dry-run)")
    # logs the report's path
    reproduce(args.preset, args.out, force=force, device=args.device, seeds=seeds)
    return 0


def _dry_run_study(preset: str, seeds: list[int] | None) -> int:
    """``reproduce --dry-run``: the study as ``study.yaml`` would hold it and its runs."""
    from dataclasses import replace

    from .config import dump_yaml
    from .study import load_study

    study = load_study(preset)
    if seeds is not None:
        study = replace(study, seeds=tuple(seeds))
    runs = [*study.run_configs(), *study.ablation_runs()]  # resolves every run's config
    print(dump_yaml(study), end="")
    print(f"# {len(runs)} runs: {', '.join(runs)}")
    return 0


def _seed_list(text: str) -> list[int]:
    """``0,1,2`` -> ``[0, 1, 2]``; anything else is a one-line error."""
    from .errors import ConfigError

    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds:
        raise ConfigError("--seeds needs at least one seed, e.g. --seeds 0,1,2")
    return seeds


@_distributed
def _cmd_buildup(args: argparse.Namespace) -> int:
    from .buildup import BuildupConfig, buildup
    from .config import merge, parse_overrides

    flags = {
        ("data", "name"): args.data,
        ("data", "root"): args.data_root,
        ("data", "fraction"): args.fraction,
        ("train", "epochs"): args.epochs,
        ("train", "warmup_epochs"): args.warmup_epochs,
        ("train", "device"): args.device,
        ("train", "seed"): args.seed,
    }
    overrides = merge(_nest(flags, args.no_progress), parse_overrides(args.set or []))
    cfg = BuildupConfig(
        base=args.base,
        train_preset=args.preset,
        overrides=overrides,
        max_msas=args.max_msas,
        min_stage=args.min_stage,
        min_gain=args.min_gain,
    )
    state = buildup(cfg, args.out)
    best = state["best"]
    _say(
        f"best: {best['layout']}  test accuracy {best['acc']:.4f}  (msas={best['msas']})",
        f"buildup: {Path(args.out) / 'buildup.json'}",
    )
    return 0


@_plugins
def _cmd_report(args: argparse.Namespace) -> int:
    from .report import build_report

    out = Path(args.out) if args.out else None
    print(f"report: {build_report([Path(d) for d in args.study_dirs], out)}")
    return 0


def _threads_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads",
        metavar="N",
        help="CPU threads (default: the cores this process may use; $VITSCOPE_THREADS; "
        "an OMP_NUM_THREADS you set is kept)",
    )


def _add_list(sub) -> None:
    p = sub.add_parser("list", help="list models, datasets, presets, studies or analyses")
    p.add_argument("what", choices=["models", "datasets", "presets", "studies", "analyses"])
    _plugin_flag(p)
    p.set_defaults(func=_cmd_list)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model into a run directory (resumes a killed run)")
    p.add_argument(
        "--preset", default="cpu", help="training recipe (vitscope list presets); default: cpu"
    )
    p.add_argument("--config", help="YAML file overriding the preset")
    p.add_argument("--model", help="model name (vitscope list models)")
    p.add_argument("--data", help="dataset name (vitscope list datasets)")
    p.add_argument("--data-root", help="folder holding the dataset files")
    p.add_argument(
        "--fraction", type=float, help="class-balanced fraction of the training set, e.g. 0.06"
    )
    p.add_argument("--epochs", type=int, help="main epochs (after warm-up)")
    p.add_argument("--device", help="cpu (default), cuda, cuda:N")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument(
        "--amp",
        choices=["none", "bf16", "auto"],
        help="bf16 autocast; auto: where the device computes bf16 natively",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument(
        "--channels-last", action="store_true", help="channels-last memory format (conv nets)"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config field, e.g. train.lr=1e-3",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--out", help="run directory to create (or continue, if it holds the same config)"
    )
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR with its saved config")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="check the config (values, model and dataset names) and print the config.yaml "
        "the run would write; train nothing",
    )
    _threads_flag(p)
    p.set_defaults(func=_cmd_train)


def _add_fetch(sub) -> None:
    p = sub.add_parser(
        "fetch", help="make sure a dataset is present (download with checksum if not)"
    )
    p.add_argument("dataset")
    p.add_argument("--data-root", help="folder holding (or to hold) the dataset files")
    p.set_defaults(func=_cmd_fetch)


def _add_analyze(sub) -> None:
    p = sub.add_parser("analyze", help="run analyses on a run's checkpoint (or on any model)")
    p.add_argument("run_dir", nargs="?", help="run directory made by vitscope train")
    p.add_argument(
        "--only", help="comma-separated analyses (default: all; see vitscope list analyses)"
    )
    p.add_argument(
        "--checkpoint",
        help="best, last, warmup, init, epochN or a .pt path (default: best; hessian: warmup)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="ANALYSIS.KEY=VALUE",
        help="e.g. fourier.num_images=64",
    )
    p.add_argument("--force", action="store_true", help="recompute results that already exist")
    p.add_argument("--tag", help="save as ANALYSIS-TAG beside the result of other settings "
                   "(e.g. --tag pca for a second landscape)")  # fmt: skip
    _foreign_flags(p)
    p.add_argument("--data", help="dataset for a --timm/--torchvision/--hf/--model-file model")
    p.add_argument("--data-root", help="folder holding the dataset files")
    p.add_argument("--fraction", type=float,
                   help="training fraction the curvature analyses use (default 1)")  # fmt: skip
    p.add_argument("--preset", default="cpu",
                   help="training recipe whose augmentation and weight decay the curvature "
                   "analyses use (default: cpu)")  # fmt: skip
    p.add_argument("--out", help="run directory for a --timm/--torchvision/--hf/--model-file model")
    _plugin_flag(p)
    _threads_flag(p)
    p.set_defaults(func=_cmd_analyze)


def _foreign_flags(p: argparse.ArgumentParser) -> None:
    """The flags that name a foreign model (``analyze`` and ``blocks``)."""
    g = p.add_argument_group("a model vitscope did not train")
    g.add_argument("--timm", metavar="NAME", help="a timm model, e.g. deit_tiny_patch16_224")
    g.add_argument("--torchvision", metavar="NAME", help="a torchvision model, e.g. resnet50")
    g.add_argument(
        "--hf",
        metavar="DIR",
        help="a Hugging Face model folder (config.json, optional preprocessor_config.json, "
        "model.safetensors) or its config.json",
    )
    g.add_argument(
        "--model-file",
        metavar="FILE.py:FUNC",
        help="your own model: FUNC() returns an nn.Module",
    )
    g.add_argument("--weights", metavar="FILE",
                   help="local weights: .safetensors, .pth, .pt, .bin (never a hub)")  # fmt: skip
    g.add_argument("--model-kwargs", metavar="JSON",
                   help='constructor arguments, e.g. \'{"num_classes": 10}\'')  # fmt: skip
    g.add_argument("--img-size", type=int, help="the model's input side (inputs are resized)")
    g.add_argument("--mean", metavar="M,M,M", help="the model's input mean (default: its config)")
    g.add_argument("--std", metavar="S,S,S", help="the model's input std (default: its config)")
    g.add_argument(
        "--blocks",
        metavar="JSON",
        help='units by module-name pattern instead of the rule, e.g. \'{"msa": "blocks.*.attn"}\'',
    )


def _add_blocks(sub) -> None:
    p = sub.add_parser("blocks", help="print a model's units as the analyses see them")
    p.add_argument("--model", help="a vitscope model (vitscope list models)")
    p.add_argument("--checkpoint", help=argparse.SUPPRESS)
    _foreign_flags(p)
    _plugin_flag(p)
    p.set_defaults(func=_cmd_blocks)


def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="overlay one analysis of several runs in one figure")
    p.add_argument("analysis", help="an analysis that declares an overlay (vitscope list analyses)")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", required=True, help="figure file (.png or .pdf)")
    p.add_argument("--tag", help="compare the results saved with analyze --tag TAG")
    _plugin_flag(p)
    p.set_defaults(func=_cmd_compare)


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export_landscape

    path = export_landscape(args.run_dir, args.format, args.out, surface=args.surface,
                            zmax=args.zmax, log=args.log, tag=args.tag)  # fmt: skip
    print(f"{args.format}: {path}")
    return 0


def _add_export(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write a result in another tool's format (the landscape as loss-landscape's "
        "HDF5, ParaView's .vtp or CSV)",
    )
    p.add_argument("what", choices=["landscape"], help="what to export")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory with that result")
    p.add_argument("--format", required=True, choices=["h5", "vtp", "csv"],
                   help="h5: loss-landscape's keys (h5py); vtp: ParaView; csv")  # fmt: skip
    p.add_argument("--out", help="file to write (default: RUN_DIR/exports/landscape.FORMAT)")
    p.add_argument("--tag", help="the landscape saved with analyze --tag TAG "
                   "(default file: exports/landscape-TAG.FORMAT)")  # fmt: skip
    p.add_argument("--surface", default="train_loss",
                   choices=["train_loss", "train_loss_l2", "train_acc", "l2"],
                   help="vtp: the surface drawn as height (train_loss: the NLL)")  # fmt: skip
    p.add_argument("--zmax", type=float, help="vtp: clip the height at this value")
    p.add_argument("--log", action="store_true", help="vtp: height log(z + 0.1)")
    p.set_defaults(func=_cmd_export)


def _add_buildup(sub) -> None:
    p = sub.add_parser(
        "buildup",
        help="AlterNet build-up search: replace a CNN's stage-ending Convs with MSAs (resumes)",
    )
    p.add_argument("--base", default="resnet_tiny", help="base CNN: resnet_tiny (default), "
                   "resnet18, resnet50, resnet50_imagenet, or an alternet* model")  # fmt: skip
    p.add_argument("--preset", default="cpu", help="training recipe of every candidate")
    p.add_argument("--data", help="dataset name (vitscope list datasets)")
    p.add_argument("--data-root", help="folder holding the dataset files")
    p.add_argument("--fraction", type=float, help="class-balanced training fraction")
    p.add_argument("--epochs", type=int, help="main epochs of every candidate")
    p.add_argument("--warmup-epochs", type=int, help="warm-up epochs of every candidate")
    p.add_argument("--max-msas", type=int, help="stop once the best layout has this many MSAs")
    p.add_argument("--min-stage", type=int, default=1, help="earliest stage given an MSA")
    p.add_argument("--min-gain", type=float, default=0.0,
                   help="accuracy gain (fraction) an MSA must bring to be kept")  # fmt: skip
    p.add_argument("--device", help="cpu (default), cuda, cuda:N")
    p.add_argument("--seed", type=int, help="random seed of every candidate")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any config field")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--out", required=True, help="search directory (re-running resumes it)")
    _threads_flag(p)
    p.set_defaults(func=_cmd_buildup)


def _add_reproduce(sub) -> None:
    p = sub.add_parser(
        "reproduce", help="a whole study: train the grid, run every analysis, report"
    )
    p.add_argument(
        "--preset", default="cpu-mini", help="study preset (vitscope list studies) or YAML file"
    )
    p.add_argument("--out", help="study directory (re-running resumes it)")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="check the study (every run's config, the analyses' settings) and print the "
        "study.yaml it would write and its runs; run nothing",
    )
    p.add_argument(
        "--force", metavar="STEP[,STEP]", help="redo: train, analyze, report or an analysis name"
    )
    p.add_argument("--device", help="cpu (default) or cuda")
    p.add_argument(
        "--seeds",
        metavar="S[,S]",
        help="training seeds, one run per model, fraction and seed (default: the study's)",
    )
    _plugin_flag(p)
    _threads_flag(p)
    p.set_defaults(func=_cmd_reproduce)


def _add_report(sub) -> None:
    p = sub.add_parser(
        "report", help="rebuild report.html from saved results of one or more studies"
    )
    p.add_argument("study_dirs", nargs="+", metavar="STUDY_DIR")
    p.add_argument("--out", help="folder for report.html (default: the first study)")
    _plugin_flag(p)
    p.set_defaults(func=_cmd_report)


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="test metrics of a run's checkpoint")
    p.add_argument("run_dir")
    p.add_argument(
        "--checkpoint",
        default="best",
        help="best (default), last, init, warmup, epochN or a .pt path",
    )
    p.add_argument("--device", default="cpu")
    _threads_flag(p)
    p.set_defaults(func=_cmd_evaluate)


class _Parser(argparse.ArgumentParser):
    """argparse with vitscope's error style: one ``error: ...`` line naming the command's
    ``--help`` (not the usage block), exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="vitscope",
        description="Why vision transformers behave as they do (Park & Kim, ICLR 2022).",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"vitscope {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_list(sub)
    _add_train(sub)
    _add_fetch(sub)
    _add_analyze(sub)
    _add_blocks(sub)
    _add_compare(sub)
    _add_export(sub)
    _add_buildup(sub)
    _add_reproduce(sub)
    _add_report(sub)
    _add_evaluate(sub)
    return parser


def _warning_line(message, category, filename, lineno, line=None) -> str:
    """Warnings on the command line: one ``warning: ...`` line (no source location), like
    the errors; library callers keep Python's format."""
    return f"warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vitscope`` console script."""
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.func
    formatwarning, warnings.formatwarning = warnings.formatwarning, _warning_line
    try:
        from .threads import configure, parse_threads

        computes = hasattr(args, "threads")  # train, analyze, reproduce, ...: load-aware
        folder = next((getattr(args, k) for k in ("resume", "out", "run_dir")
                       if getattr(args, k, None)), None)  # fmt: skip
        configure(
            parse_threads(getattr(args, "threads", None)),
            folder=folder,
            measure=computes and not getattr(args, "dry_run", False),
        )  # before torch loads
        with preempt.installed():  # SIGTERM / SIGINT: stop at the next safe point, saved
            return handler(args)
    except preempt.Preempted as e:
        if os.environ.get("RANK", "0") == "0":
            print(f"stopped: {e}; run the same command again to continue", file=sys.stderr)
        return preempt.EXIT_PREEMPTED
    except VitscopeError as e:
        rank = os.environ.get("RANK", "0")  # torchrun: every rank says it, rank 0 plainly
        print(f"error{'' if rank == '0' else f' (rank {rank})'}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = formatwarning


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
