"""One exact Hessian-vector product against one gradient, per tiny model and HVP flavour.

    python benchmarks/hvp_cost.py [--models resnet_tiny,vit_tiny,...] [--batch-size 64]
        [--rounds 7] [--threads 1] [--device cpu] [--json rows.json]

Same model (eval mode), same batch of 28x28 grey images, cross-entropy, all parameters:

* ``grad``: ``torch.autograd.grad(loss, params)``, forward included (the reference, 1.0);
* ``cached``: :class:`vitscope.curvature.HessianOperator`'s product: one double backward
  over the gradient graph built once (what vitscope uses; the build is not timed);
* ``rebuild``: a fresh forward + ``create_graph`` backward + double backward per product
  (what PyHessian 0.1 does);
* ``fwd-rev``: forward-over-reverse, ``torch.func.jvp(torch.func.grad(loss), (θ,), (v,))``
  per product (forward included);
* ``vmap8``: ``fwd-rev`` vmapped over 8 vectors at once, time per vector.

The exact HVP's floor is about 2x a gradient (Pearlmutter 1994). The rounds alternate over
the flavours; medians and the ratio to ``grad`` are printed, and with ``--json`` written as
rows for ``benchmarks/bench_all.py``. Every flavour is checked against ``cached`` first
(relative error printed) so a wrong fast path cannot win.
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, jvp, vmap

from vitscope.curvature import HessianOperator
from vitscope.curvature.hvp import flatten, unflatten
from vitscope.models import create_model

from _table import row, write
from _timing import median_time

MODELS = "resnet_tiny,vit_tiny,pit_tiny,swin_tiny,alternet_tiny"


def flavours(name: str, batch_size: int, device: torch.device) -> tuple[dict, dict]:
    """The callables to time and their relative errors against ``cached``."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_chans=1, img_size=28).to(device).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 1, 28, 28, generator=g).to(device)
    y = torch.randint(0, 10, (batch_size,), generator=g).to(device)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    buffers = dict(model.named_buffers())
    op = HessianOperator(lambda: F.cross_entropy(model(x), y), params)
    v = torch.randn(op.dim, generator=g).to(device)
    vs = torch.randn(8, op.dim, generator=g).to(device)

    def loss_of(flat: torch.Tensor) -> torch.Tensor:
        state = dict(zip(names, unflatten(flat, params)))
        return F.cross_entropy(functional_call(model, (state, buffers), (x,)), y)

    theta = flatten([p.detach() for p in params])

    def fwd_rev(u: torch.Tensor) -> torch.Tensor:
        return jvp(grad(loss_of), (theta,), (u,))[1]

    def rebuild(u: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(model(x), y)
        gs = torch.autograd.grad(loss, params, create_graph=True)
        return flatten(torch.autograd.grad(gs, params, grad_outputs=unflatten(u, params)))

    def gradient() -> None:
        torch.autograd.grad(F.cross_entropy(model(x), y), params)

    ref = op @ v
    scale = ref.norm()
    errors = {
        "rebuild": float((rebuild(v) - ref).norm() / scale),
        "fwd-rev": float((fwd_rev(v) - ref).norm() / scale),
        "vmap8": float((vmap(fwd_rev)(torch.stack([v, *vs[1:]]))[0] - ref).norm() / scale),
    }
    fns = {
        "grad": gradient,
        "cached": lambda: op @ v,
        "rebuild": lambda: rebuild(v),
        "fwd-rev": lambda: fwd_rev(v),
        "vmap8": lambda: vmap(fwd_rev)(vs),
    }
    return fns, errors


def bench(name: str, batch_size: int, rounds: int, device: torch.device) -> dict:
    fns, errors = flavours(name, batch_size, device)
    for fn in fns.values():  # warm-up, not timed
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            times[k].append(median_time(fn, device, 1))
    med = {k: statistics.median(t) for k, t in times.items()}
    med["vmap8"] /= 8  # per vector
    return {"model": name, "seconds": med, "errors": errors}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=MODELS)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", help="also write the table's rows here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(
        f"torch {torch.__version__}, {device}, {torch.get_num_threads()} thread(s), batch "
        f"{args.batch_size} x 1x28x28, median of {args.rounds} rounds; HVP time / gradient time"
    )
    cols = ("cached", "rebuild", "fwd-rev", "vmap8")
    print(f"{'model':<15}{'grad ms':>9}" + "".join(f"{c:>9}" for c in cols) + "   max rel. err")
    rows = []
    for name in args.models.split(","):
        r = bench(name.strip(), args.batch_size, args.rounds, device)
        s = r["seconds"]
        ratios = {c: s[c] / s["grad"] for c in cols}
        print(
            f"{name:<15}{1e3 * s['grad']:>9.1f}"
            + "".join(f"{ratios[c]:>8.2f}x" for c in cols)
            + f"   {max(r['errors'].values()):.1e}"
        )
        best = min(cols, key=ratios.get)
        detail = ", ".join(f"{c} {ratios[c]:.2f}" for c in cols)
        rows.append(row("HVP time / gradient time", f"{name} (vitscope: cached)",
                        ratios["cached"], None, "lower", f"{detail}; cheapest {best}"))  # fmt: skip
    write(args.json, rows)


if __name__ == "__main__":
    main()
