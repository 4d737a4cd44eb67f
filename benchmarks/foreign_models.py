"""Every analysis on foreign models by name: units found, and seconds per analysis.

    .venv-tv/bin/python benchmarks/foreign_models.py [--models timm:resnet18,hf:vit] [--out DIR]

Each model (random weights, 10 classes, 32 px input) goes through the same code path as
``vitscope analyze --timm/--torchvision/--hf``: :func:`vitscope.load_foreign`, then
:func:`vitscope.analyze_foreign` on Fashion-MNIST (grey 28 px, resized and repeated to RGB by
the wrapper), one analysis at a time so each is timed alone, with the reduced settings in
``QUICK``. vitscope's own ``resnet_tiny`` and ``vit_tiny`` run first through the same path as
the reference: the table prints each model's total time as a ratio to ``resnet_tiny``'s,
measured in the same run. Hugging Face models are built from small configs saved to a local
folder (``save_pretrained``), as a user's checkpoint folder would be.

Timings are for one CPU process; run with nothing else busy.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

QUICK = [
    "fourier.num_images=64", "variance.num_images=64",
    "noise.frequencies=[0.1,0.5,0.9]", "noise.num_images=256",
    "lesion.num_images=256",
    "overfitting.batches=2", "overfitting.batch_size=64",
    "landscape.dims=1", "landscape.num_points=11", "landscape.batches=1",
    "landscape.batch_size=64",
    "hessian.batches=1", "hessian.batch_size=32", "hessian.top_k=3", "hessian.max_iter=30",
    "hessian.density_batches=0", "hessian.trace_batches=0",
]  # fmt: skip
ANALYSES = ["fourier", "variance", "noise", "lesion", "overfitting", "landscape", "hessian"]
K10 = {"num_classes": 10}
MODELS = {
    "vitscope:resnet_tiny": None,
    "vitscope:vit_tiny": None,
    "timm:deit_tiny_patch16_224": {"num_classes": 10, "patch_size": 4},
    "timm:resnet18": K10,
    "timm:convnext_atto": K10,
    "timm:swin_tiny_patch4_window7_224": {"num_classes": 10, "window_size": 4},
    "timm:pit_ti_224": K10,
    "torchvision:resnet18": K10,
    "torchvision:vit_b_16": K10,
    "torchvision:swin_t": K10,
    "torchvision:convnext_tiny": K10,
    "hf:vit": None,
    "hf:deit": None,
    "hf:swin": None,
    "hf:convnext": None,
    "hf:resnet": None,
}


def hf_folder(kind: str, root: Path) -> Path:
    """A Hugging Face model folder (config + weights + preprocessor), as a user has one."""
    import json

    import transformers as T

    configs = {
        "vit": (T.ViTConfig, T.ViTForImageClassification, {"image_size": 32, "patch_size": 8}),
        "deit": (T.DeiTConfig, T.DeiTForImageClassification,
                 {"image_size": 32, "patch_size": 4, "hidden_size": 192, "num_hidden_layers": 12,
                  "num_attention_heads": 3, "intermediate_size": 768}),
        "swin": (T.SwinConfig, T.SwinForImageClassification,
                 {"image_size": 32, "patch_size": 2, "window_size": 4, "depths": [2, 2, 2],
                  "num_heads": [3, 6, 12]}),
        "convnext": (T.ConvNextConfig, T.ConvNextForImageClassification, {}),
        "resnet": (T.ResNetConfig, T.ResNetForImageClassification,
                   {"layer_type": "basic", "depths": [2, 2, 2, 2],
                    "hidden_sizes": [64, 128, 256, 512]}),
    }  # fmt: skip
    config_cls, model_cls, kw = configs[kind]
    folder = root / f"hf-{kind}"
    model_cls(config_cls(num_labels=10, **kw)).save_pretrained(folder)
    pre = {"image_mean": [0.5] * 3, "image_std": [0.5] * 3, "size": {"height": 32, "width": 32}}
    (folder / "preprocessor_config.json").write_text(json.dumps(pre))
    return folder


def build(key: str, root: Path):
    import vitscope

    source, name = key.split(":", 1)
    if source == "vitscope":
        return vitscope.create_model(name, num_classes=10, in_chans=1, img_size=28)
    if source == "hf":
        return vitscope.load_foreign("hf", str(hf_folder(name, root)))
    return vitscope.load_foreign(source, name, model_kwargs=MODELS[key], img_size=32)


def main() -> None:
    import vitscope
    from vitscope.models import blocks

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--out", help="keep the run directories here (default: a temp folder)")
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out or tmp)
        for key in args.models.split(","):
            model = build(key, root)
            units = blocks(model)
            params = sum(p.numel() for p in model.parameters())
            seconds = {}
            for name in ANALYSES:
                t0 = time.perf_counter()
                vitscope.analyze_foreign(
                    model, root / "runs" / key.replace(":", "_"), data="fashion-mnist",
                    only=name, sets=QUICK, log=lambda _line: None,
                )  # fmt: skip
                seconds[name] = time.perf_counter() - t0
            kinds = Counter(b.kind for b in units)
            rows.append((key, getattr(model, "rule", "vitscope"), len(units), kinds, params,
                         seconds))  # fmt: skip
            times = " ".join(f"{a} {seconds[a]:.1f}" for a in ANALYSES)
            print(f"{key}: {len(units)} units, {sum(seconds.values()):.1f} s ({times})", flush=True)
    ref = sum(rows[0][5].values())
    print(f"\nreference: {rows[0][0]} ({ref:.1f} s for all seven analyses)\n")
    head = "| model | rule | units | kinds | params | " + " | ".join(ANALYSES)
    print(head + " | total s | × ref |")
    print("|" + "---|" * (7 + len(ANALYSES)))
    for key, rule, n, kinds, params, seconds in rows:
        mix = " ".join(f"{k}:{v}" for k, v in kinds.items())
        times = " | ".join(f"{seconds[a]:.1f}" for a in ANALYSES)
        total = sum(seconds.values())
        print(f"| {key} | {rule} | {n} | {mix} | {params / 1e6:.2f}M | {times} | "
              f"{total:.1f} | {total / ref:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
