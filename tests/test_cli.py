import pytest

from vitscope.cli import build_parser, main


@pytest.mark.parametrize("cmd", [[], ["train"], ["list"], ["evaluate"], ["fetch"]])
def test_help_for_every_command(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([*cmd, "--help"])
    assert e.value.code == 0
    assert "usage: vitscope" in capsys.readouterr().out


def test_every_subcommand_is_documented():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"list", "train", "evaluate", "fetch"} <= set(sub.choices)
    assert all(
        p.description or sub._name_parser_map[n].format_help() for n, p in sub.choices.items()
    )


@pytest.mark.parametrize(
    "what, expect",
    [("models", "vit_tiny"), ("datasets", "fashion-mnist"), ("presets", "paper-vit")],
)
def test_list(what, expect, capsys):
    assert main(["list", what]) == 0
    assert expect in capsys.readouterr().out


def _one_line_error(capsys, *words):
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    for w in words:
        assert w in err, err
    return err


def test_unknown_model(folder_data, tmp_path, capsys):
    args = [
        "train",
        "--model",
        "vit_huge",
        "--data",
        "folder",
        "--data-root",
        str(folder_data),
        "--out",
        str(tmp_path / "r"),
    ]
    assert main(args) == 2
    _one_line_error(capsys, "unknown model 'vit_huge'", "resnet_tiny")


@pytest.mark.parametrize("fraction, words", [("-0.5", "data.fraction"), ("0.001", "empty")])
def test_bad_fraction(fraction, words, folder_data, tmp_path, capsys):
    args = [
        "train",
        "--data",
        "folder",
        "--data-root",
        str(folder_data),
        "--fraction",
        fraction,
        "--out",
        str(tmp_path / "r"),
        "--no-progress",
    ]
    assert main(args) == 2
    _one_line_error(capsys, words)
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_missing_dataset(tmp_path, capsys):
    args = [
        "train",
        "--data",
        "folder",
        "--data-root",
        str(tmp_path / "nowhere"),
        "--out",
        str(tmp_path / "r"),
    ]
    assert main(args) == 2
    _one_line_error(capsys, str(tmp_path / "nowhere"))


def test_unknown_dataset_and_preset(tmp_path, capsys):
    assert main(["train", "--data", "mnist9", "--out", str(tmp_path / "r")]) == 2
    _one_line_error(capsys, "unknown dataset 'mnist9'", "fashion-mnist")
    assert main(["train", "--preset", "nope", "--out", str(tmp_path / "r")]) == 2
    _one_line_error(capsys, "unknown preset")


def test_resume_requires_a_run(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path)]) == 2
    _one_line_error(capsys, "no run")
    assert main(["evaluate", str(tmp_path)]) == 2
    _one_line_error(capsys, "not a vitscope run directory")


def test_train_and_evaluate_from_the_cli(folder_data, tmp_path, capsys):
    out = tmp_path / "r"
    args = [
        "train",
        "--data",
        "folder",
        "--data-root",
        str(folder_data),
        "--epochs",
        "1",
        "--set",
        "train.batch_size=16",
        "--no-progress",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and f"run: {out}" in printed
    assert main(["evaluate", str(out), "--checkpoint", "last"]) == 0
    assert "acc" in capsys.readouterr().out
    assert (out / "results" / "evaluate_last.json").is_file()
