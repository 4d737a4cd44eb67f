import pytest
import yaml

from vitscope import config as C
from vitscope.errors import ConfigError


@pytest.mark.parametrize("name", C.list_presets())
def test_every_preset_loads_and_validates(name):
    cfg = C.resolve(preset=name)
    assert isinstance(cfg, C.RunConfig)
    assert C.preset_description(name)
    # round trip: the dumped YAML resolves to the same config
    again = C.from_dict(C.RunConfig, yaml.safe_load(C.dump_yaml(cfg)))
    assert again == cfg


def test_paper_vit_preset_matches_the_spec():
    cfg = C.resolve(preset="paper-vit")
    t, a = cfg.train, cfg.augment
    assert (t.optimizer, t.lr, t.batch_size, t.weight_decay) == ("adamw", 1.25e-4, 96, 0.05)
    assert (t.warmup_epochs, t.epochs, t.schedule, t.grad_clip) == (5, 300, "cosine", 5.0)
    assert (a.randaugment, a.ra_n, a.ra_m) == (True, 2, 9)
    assert (a.mixup_alpha, a.cutmix_alpha, a.label_smoothing) == (1.0, 0.8, 0.1)
    assert cfg.model.drop_path == 0.1
    sgd = C.resolve(preset="paper-sgd").train
    assert (sgd.optimizer, sgd.lr, sgd.milestones, sgd.gamma) == ("sgd", 0.1, (60, 120, 160), 0.2)


def test_ra_mstd_reaches_the_augmentation_and_the_imagenet_preset_uses_the_papers():
    from vitscope.data import dataset_info
    from vitscope.study import load_study
    from vitscope.train.trainer import build_augment

    cfg = C.resolve(preset="paper-vit", overrides={"augment": {"ra_mstd": 0.5}})
    assert build_augment(cfg, dataset_info("cifar100")).ra_mstd == 0.5
    assert C.resolve(preset="paper-vit").augment.ra_mstd == 1.0
    runs = load_study("imagenet").run_configs().values()
    assert runs and all(r.augment.ra_mstd == 0.5 for r in runs)
    assert all(r.augment.rrc and r.augment.interpolation == "random" for r in runs)
    assert all(r.data.loader == "stream" and r.data.img_size == 224 for r in runs)
    assert all(r.data.stats() == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)) for r in runs)
    assert all(r.data.crop_pct == 0.875 and r.augment.reprob == 0.25 for r in runs)
    assert all(r.augment.remode == "const" and r.augment.recount == 1 for r in runs)


def test_layers_override_in_order(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lr: 0.5\n  epochs: 7\nmodel:\n  kwargs: {head: cls}\n")
    cfg = C.resolve(
        preset="paper-vit",
        config_file=f,
        overrides={"train": {"epochs": 3}},
        sets=["train.lr=2e-3", "model.kwargs.head=gap", "train.milestones=[1, 2]"],
    )
    assert cfg.train.lr == 2e-3  # --set beats the file
    assert cfg.train.epochs == 3  # flags beat the file
    assert cfg.train.batch_size == 96  # the preset survives
    assert cfg.model.kwargs == {"head": "gap"}
    assert cfg.train.milestones == (1, 2)


@pytest.mark.parametrize(
    "sets, words",
    [
        (["train.lrr=1"], "unknown config key train.lrr"),
        (["data.fraction=-0.1"], "data.fraction"),
        (["data.fraction=1.5"], "data.fraction"),
        (["train.optimizer=adam"], "train.optimizer"),
        (["train.batch_size=0"], "train.batch_size"),
        (["train.batch_size=abc"], "train.batch_size must be an integer"),
        (["train.lr=nan"], "train.lr"),
        (["augment.label_smoothing=2"], "augment.label_smoothing"),
        (["augment.ra_mstd=-1"], "augment.ra_mstd must be >= 0"),
        (["train.device=tpu"], "train.device"),
        (["train.amp=fp16"], "train.amp must be one of ('none', 'bf16', 'auto')"),
        (["nonsense"], "key=value"),
    ],
)
def test_bad_values_raise_one_line_errors(sets, words):
    with pytest.raises(ConfigError) as e:
        C.resolve(preset="cpu", sets=sets)
    assert words in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(ConfigError, match="valid presets: cpu"):
        C.resolve(preset="nope")


def test_bad_yaml_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        C.resolve(config_file=f)
    with pytest.raises(ConfigError, match="does not exist"):
        C.resolve(config_file=tmp_path / "missing.yaml")
