"""Property-based fuzzing of the command line and the config layer (hypothesis).

Generated ``--set`` items, flags, run YAML files and study files go through the real entry
point (``vitscope train --dry-run``, ``vitscope reproduce --dry-run``). Every one either
exits 2 with one ``error: ...`` line and no traceback, or exits 0 and prints a config that
reads back (as ``config.yaml`` / ``study.yaml`` are read on resume) to the same config.
"""

import contextlib
import dataclasses
import io
import json
import math
import tempfile
import types
import typing
from pathlib import Path

import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from vitscope.analyses import analyses
from vitscope.cli import main
from vitscope.config import RunConfig, dump_yaml, from_dict, resolve
from vitscope.study import StudyConfig, load_study, upgrade

SECTIONS = {f.name: f.type for f in dataclasses.fields(RunConfig)}
FIELDS = {
    section: [f.name for f in dataclasses.fields(getattr(RunConfig(), section))]
    for section in SECTIONS
}
KEYS = [f"{s}.{k}" for s, names in FIELDS.items() for k in names]
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))

# YAML text a user might type after `=`: numbers of every kind, YAML's special words, lists
# and mappings, broken syntax, tags (a python/object tag must never construct anything)
SPECIAL = [
    "true", "false", "null", "~", "yes", "no", "on", ".inf", "-.inf", ".nan", "[]", "{}",
    "[1, 2]", "[0.1, 1.0]", "[a, b]", "{a: 1}", "'x'", "1e-3", "1e400", "0x10", "0o7", "- x",
    ":", "[", "{", "'", '"', "!!python/object/apply:os.system [echo hi]", "&a x", "*a", "%",
    "cpu", "cuda:0", "bf16", "auto", "gap", "resnet_tiny", "vit_tiny", "folder", "cifar10",
    "-1", "0", "1", "2", "128", "0.5", "1.5", "99999999999999999999999999",
]  # fmt: skip
yaml_text = st.one_of(
    st.sampled_from(SPECIAL),
    st.integers(-(10**6), 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=12),
)
junk_name = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_.", min_size=1, max_size=12)
set_key = st.one_of(
    st.sampled_from(KEYS),
    st.sampled_from(KEYS),  # twice: mostly real keys, whose values are what is checked
    st.builds(lambda s, k: f"{s}.{k}", st.sampled_from(list(SECTIONS)), junk_name),
    st.builds(lambda k: f"model.kwargs.{k}", junk_name),
    junk_name,
)
scalar = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**4), 10**4),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
    st.sampled_from(["cpu", "bf16", "cosine", "sgd", "gap", "resnet_tiny", "folder"]),
)  # fmt: skip
WORDS = ["cpu", "bf16", "none", "auto", "cosine", "multistep", "constant", "sgd", "adamw",
         "pil", "stream", "memory", "bilinear", "bicubic", "random", "const", "pixel", "gap",
         "resnet_tiny", "vit_tiny", "pit_tiny", "folder", "fashion-mnist", "cifar10"]  # fmt: skip


def _typed(tp) -> st.SearchStrategy:
    """Values of a field's own type (the ones most likely valid), and near misses."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(_typed(a) for a in args))
    if tp is type(None):
        return st.none()
    if origin in (tuple, list):
        return st.lists(_typed(args[0]), max_size=3)
    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.integers(-2, 300)
    if tp is float:
        return st.one_of(st.floats(-0.5, 2.0), st.sampled_from([0.0, 1.0, 1e-3, 0.05, 5e-4]))
    if tp is str:
        return st.one_of(st.sampled_from(WORDS), st.text(max_size=8))
    return st.dictionaries(junk_name, scalar, max_size=2)


HINTS = {s: typing.get_type_hints(type(getattr(RunConfig(), s))) for s in SECTIONS}
typed_item = st.sampled_from(KEYS).flatmap(
    lambda key: _typed(HINTS[key.split(".")[0]][key.split(".")[1]]).map(
        lambda v: f"{key}={yaml.safe_dump(v, default_flow_style=True, width=10**6).strip()}"
    )
)
set_item = st.one_of(
    typed_item,
    typed_item,
    st.builds(lambda k, v: f"{k}={v}", set_key, yaml_text),
    st.text(max_size=15),  # anything at all, `=` or not
)
value = st.recursive(scalar, lambda inner: st.lists(inner, max_size=3), max_leaves=4)


def _cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


def _refused_in_one_line(rc: int, err: str, argv: list[str]) -> None:
    assert rc == 2, (argv, rc, err)
    assert err.startswith("error: ") and err.count("\n") == 1, (argv, err)
    assert "Traceback" not in err, (argv, err)


def _same(a, b) -> bool:
    """Equal configs (dataclass ==, which a NaN would make unequal to itself)."""
    return a == b or yaml.safe_dump(dataclasses.asdict(a)) == yaml.safe_dump(dataclasses.asdict(b))


def _check_run(argv: list[str], expected) -> None:
    """``train --dry-run`` refuses in one line, or prints a config.yaml that reads back."""
    rc, out, err = _cli(argv)
    event("refused" if rc else "valid")
    if rc != 0:
        _refused_in_one_line(rc, err, argv)
        return
    assert err == "" or all(line.startswith("warning: ") for line in err.splitlines()), err
    again = from_dict(RunConfig, yaml.safe_load(out))  # how resume reads config.yaml
    assert _same(again, expected()), argv
    assert dump_yaml(again) == out, argv


@FUZZ
@given(st.lists(set_item, min_size=1, max_size=4))
def test_set_items(items):
    argv = ["train", "--dry-run", *(a for item in items for a in ("--set", item))]
    _check_run(argv, lambda: resolve(preset="cpu", sets=items))


flag = st.one_of(
    st.tuples(st.sampled_from(["--epochs", "--seed"]), yaml_text),
    st.tuples(st.just("--fraction"), yaml_text),
    st.tuples(st.just("--amp"), st.sampled_from(["none", "bf16", "auto", "fp8", ""])),
    st.tuples(st.just("--model"), st.sampled_from(["resnet_tiny", "vit_tiny", "vit_huge", ""])),
    st.tuples(st.just("--data"), st.sampled_from(["fashion-mnist", "cifar10", "mnist", ""])),
    st.tuples(st.just("--preset"), st.sampled_from(["cpu", "paper-vit", "paper-sgd", "nope"])),
    st.tuples(st.just("--device"), st.sampled_from(["cpu", "cuda", "cuda:1", "tpu", ""])),
)


@FUZZ
@given(st.lists(flag, min_size=1, max_size=4))
def test_train_flags(flags):
    argv = ["train", "--dry-run", *(a for pair in flags for a in pair)]

    def expected():
        from vitscope.cli import _train_overrides, build_parser

        args = build_parser().parse_args(argv)
        return resolve(preset=args.preset, overrides=_train_overrides(args))

    _check_run(argv, expected)


run_file = st.one_of(
    st.dictionaries(
        st.sampled_from([*SECTIONS, "bogus"]),
        st.one_of(
            st.dictionaries(
                st.one_of(*(st.sampled_from(v) for v in FIELDS.values()), junk_name),
                value,
                max_size=4,
            ),
            value,
        ),  # fmt: skip
        max_size=4,
    ).map(lambda d: yaml.safe_dump(d)),
    st.text(max_size=40),  # not YAML, or YAML of the wrong shape
    st.sampled_from(["", "- a\n- b\n", "train: [\n", "train:\n  lr: !!python/name:os.system\n"]),
)


@FUZZ
@given(run_file)
def test_run_yaml_files(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run.yaml"
        path.write_text(text)
        argv = ["train", "--dry-run", "--preset", "cpu", "--config", str(path)]
        _check_run(argv, lambda: resolve(preset="cpu", config_file=path))


ANALYSES = analyses()
STUDY_KEYS = [f.name for f in dataclasses.fields(StudyConfig) if f.name != "plugins"]
analysis_settings = st.dictionaries(
    st.sampled_from([*ANALYSES, "nope"]),
    st.one_of(
        st.dictionaries(
            st.one_of(
                st.sampled_from(
                    sorted(
                        {f.name for a in ANALYSES.values() for f in dataclasses.fields(a.config)}
                    )
                ),
                junk_name,
            ),
            value,
            max_size=3,
        ),  # fmt: skip
        value,
    ),
    max_size=3,
)
study_fields = {
    "name": st.one_of(st.text(max_size=10), value),
    "models": st.one_of(st.lists(st.sampled_from(["resnet_tiny", "vit_tiny", "pit_tiny",
                                                  "vit_huge", ""]), max_size=3), value),
    "fractions": st.one_of(st.lists(st.floats(-1, 2) | st.sampled_from([0.06, 1.0, 0]),
                                    max_size=3), value),
    "seeds": st.one_of(st.lists(st.integers(-2, 3), max_size=3), value),
    "train_preset": st.sampled_from(["cpu", "paper-vit", "nope", 3]),
    "run": st.one_of(st.dictionaries(st.sampled_from([*SECTIONS, "bogus"]),
                                     st.dictionaries(st.sampled_from(KEYS).map(
                                         lambda k: k.split(".")[1]), value, max_size=2),
                                     max_size=2), value),
    "analyses": st.one_of(analysis_settings, value),
}  # fmt: skip
SMOKE = load_study("smoke")
DELETE = object()
study_paths = {
    **study_fields,
    "run.train.epochs": st.integers(-1, 3), "run.train.lr": _typed(float),
    "run.data.fraction": _typed(float), "run.model.drop_path": _typed(float),
    "analyses.fourier.num_images": st.integers(-1, 64),
    "analyses.hessian.top_k": st.integers(-1, 5),
    "analyses.noise.frequencies": st.lists(_typed(float), max_size=3),
    "analyses.landscape.num_points": st.integers(-1, 5), "analyses.lesion": st.none(),
    "fraction_models": st.dictionaries(st.sampled_from([0.01, 0.5]),
                                       st.lists(st.sampled_from(["resnet_tiny", "vit_tiny"]),
                                                max_size=2), max_size=1),
    "model_overrides": st.dictionaries(st.sampled_from(["resnet_tiny", "pit_tiny"]),
                                       st.just({"train": {"lr": 0.002}}), max_size=1),
    "bogus": value,
}  # fmt: skip


def _mutated(changes) -> str:
    """The smoke study with fields set to generated values, or deleted."""
    data = dataclasses.asdict(SMOKE)
    data["run"] = SMOKE.run.as_dict()
    data = json.loads(json.dumps(data))  # plain lists and str keys, as from YAML
    for path, new in changes:
        *parents, last = path.split(".")
        node = data
        for key in parents:
            node = node.setdefault(key, {}) if isinstance(node.get(key), dict | None) else {}
        if new is DELETE:
            node.pop(last, None)
        else:
            node[last] = new
    return yaml.safe_dump(data)


mutation = st.sampled_from(sorted(study_paths)).flatmap(
    lambda path: st.tuples(st.just(path), st.one_of(study_paths[path], st.just(DELETE)))
)
study_file = st.one_of(
    st.lists(mutation, min_size=1, max_size=3).map(_mutated),
    st.lists(mutation, min_size=1, max_size=3).map(_mutated),
    st.fixed_dictionaries(
        {},
        optional={**{k: value for k in STUDY_KEYS}, **study_fields, "bogus_key": value},
    ).map(lambda d: yaml.safe_dump(d)),
    st.text(max_size=40),
)


@FUZZ
@given(study_file)
def test_study_files(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "study.yaml"
        path.write_text(text)
        argv = ["reproduce", "--dry-run", "--preset", str(path)]
        rc, out, err = _cli(argv)
        event("refused" if rc else "valid")
        if rc != 0:
            _refused_in_one_line(rc, err, [text])
            return
        saved = Path(tmp) / "saved.yaml"
        saved.write_text(out)  # what study.yaml holds; the study is read back from it
        again = from_dict(StudyConfig, upgrade(yaml.safe_load(out)), "study")
        assert again == load_study(str(path)) == load_study(str(saved)), text
        assert out.splitlines()[-1].startswith("# ") and "runs: " in out.splitlines()[-1]


def test_the_fuzzers_reach_both_outcomes():
    """The strategies are not all-invalid or all-valid: a known valid and a known invalid
    input of each kind behave as the properties say."""
    ok = _cli(["train", "--dry-run", "--set", "train.lr=2e-3", "--set", "data.std=[0.5]",
               "--set", "data.mean=[0.5]"])  # fmt: skip
    assert ok[0] == 0 and from_dict(RunConfig, yaml.safe_load(ok[1])).train.lr == 2e-3
    assert math.isclose(from_dict(RunConfig, yaml.safe_load(ok[1])).data.std[0], 0.5)
    tag = "!!python/object/apply:os.system [x]"  # never constructed: safe_load refuses it
    for argv in (["train", "--dry-run", "--set", "train.lr=.nan"],
                 ["train", "--dry-run", "--set", "data.std=[a]", "--set", "data.mean=[1]"],
                 ["train", "--dry-run", "--epochs", "x"],
                 ["train", "--dry-run", "--set", f"train.lr={tag}"]):  # fmt: skip
        rc, _, err = _cli(argv)
        _refused_in_one_line(rc, err, argv)
