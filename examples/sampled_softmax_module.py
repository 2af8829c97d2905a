"""Sampled softmax as a PyTorch layer: train on samples, evaluate with the exact full softmax.

``xent.torch.SampledSoftmaxLoss(in_features, num_classes, num_sampled)`` owns
its classifier (``.weight [num_classes, in_features]``, ``.bias``). In
``train()`` mode it computes the sampled softmax loss (``num_sampled`` shared
candidates, drawn from the log-uniform distribution); in ``eval()`` mode the
same call computes the exact full-softmax cross-entropy, chunked so the
``[N, num_classes]`` logits never exist.

The data are synthetic and Zipf-distributed like words (class ``k``, its
frequency rank, has probability ``∝ log((k + 2) / (k + 1))``, the sampler's own
distribution); each example is a noisy copy of a hidden class vector. The
baseline trains the same classifier with the full softmax
(``xent.torch.LinearCrossEntropyLoss``) on the same batches. Both are
evaluated in ``eval()`` mode on held-out data.

    python examples/sampled_softmax_module.py             # a minute or two on 2 cores
    python examples/sampled_softmax_module.py --steps 50  # a quick look
    python examples/sampled_softmax_module.py --quick     # seconds: 2,000 classes, 30 steps
    XENT_EXAMPLE_QUICK=1 python examples/sampled_softmax_module.py   # the same
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

import xent.torch as xt


def zipf_labels(rng: np.random.Generator, n: int, num_classes: int) -> np.ndarray:
    u = rng.random(n)
    return (np.floor(np.exp(u * np.log(num_classes + 1))) - 1).astype(np.int64) % num_classes


def make_data(rng, n, centers, noise):
    y = zipf_labels(rng, n, centers.shape[0])
    x = centers[y] + noise * torch.from_numpy(
        rng.standard_normal((n, centers.shape[1]), dtype=np.float32))
    return x, torch.from_numpy(y)


def train(head: torch.nn.Module, params, args, data, sampled: bool):
    """Train ``head`` on the batches; return median seconds of loss fwd+bwd and of a whole step."""
    opt = torch.optim.Adam(params, lr=args.lr)
    gen = torch.Generator().manual_seed(0)
    xs, ys = data
    head.train()
    fb, step_t = [], []
    for step in range(args.steps):
        lo = (step * args.batch) % xs.shape[0]
        x, y = xs[lo:lo + args.batch], ys[lo:lo + args.batch]
        t0 = time.perf_counter()
        loss = head(x, y, rng=gen) if sampled else head(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        fb.append(time.perf_counter() - t0)
        opt.step()
        step_t.append(time.perf_counter() - t0)
    return float(np.median(fb)), float(np.median(step_t))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   default=os.environ.get("XENT_EXAMPLE_QUICK", "") not in ("", "0"),
                   help="small sizes (also XENT_EXAMPLE_QUICK=1): a run of seconds")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--classes", type=int, default=None)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--num-sampled", type=int, default=None)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--noise", type=float, default=0.7)
    p.add_argument("--eval-size", type=int, default=None)
    args = p.parse_args(argv)
    sizes = ({"steps": 30, "classes": 2000, "batch": 64, "num_sampled": 128, "eval_size": 512}
             if args.quick else
             {"steps": 200, "classes": 50_000, "batch": 128, "num_sampled": 1024,
              "eval_size": 4096})
    for k, v in sizes.items():  # explicit options win over either set of defaults
        if getattr(args, k) is None:
            setattr(args, k, v)

    rng = np.random.default_rng(0)
    centers = torch.from_numpy(rng.standard_normal((args.classes, args.dim), dtype=np.float32))
    centers /= centers.norm(dim=1, keepdim=True) / 2.0
    data = make_data(rng, args.steps * args.batch, centers, args.noise)
    x_eval, y_eval = make_data(rng, args.eval_size, centers, args.noise)
    V, D = args.classes, args.dim

    torch.manual_seed(0)
    sampled = xt.SampledSoftmaxLoss(D, V, args.num_sampled)
    full = xt.LinearCrossEntropyLoss(D, V, bias=True)
    with torch.no_grad():  # same start: small weights, biases -log V (uniform scores)
        sampled.weight.copy_(0.01 * torch.randn(V, D))
        sampled.bias.fill_(-float(np.log(V)))
        full.linear.weight.copy_(sampled.weight)
        full.linear.bias.copy_(sampled.bias)

    fb_s, step_s = train(sampled, sampled.parameters(), args, data, sampled=True)
    fb_f, step_f = train(full, full.parameters(), args, data, sampled=False)

    with torch.no_grad():
        eval_sampled = float(sampled.eval()(x_eval, y_eval))   # exact full softmax in eval()
        eval_full = float(full.eval()(x_eval, y_eval))
        # the check: torch's own cross-entropy of the materialized logits, in float64
        logits = torch.nn.functional.linear(x_eval.double(), sampled.weight.double(),
                                            sampled.bias.double())
        eval_torch = float(torch.nn.functional.cross_entropy(logits, y_eval))
    gap = eval_sampled / eval_full - 1
    print(f"{V:,} classes, {D} features, batch {args.batch}, {args.steps} steps, "
          f"{args.num_sampled} sampled candidates")
    print(f"{'trained with':>16} {'eval CE (full softmax)':>23} {'loss fwd+bwd ms':>16} "
          f"{'step ms (with Adam)':>20}")
    print(f"{'full softmax':>16} {eval_full:23.4f} {1e3 * fb_f:16.1f} {1e3 * step_f:20.1f}")
    print(f"{'sampled softmax':>16} {eval_sampled:23.4f} {1e3 * fb_s:16.1f} {1e3 * step_s:20.1f}")
    print(f"eval() of the sampled layer is the exact softmax: {eval_sampled:.6f}; "
          f"torch.nn.functional.cross_entropy of its float64 logits: {eval_torch:.6f}")
    print(f"(uniform guess: {np.log(V):.4f}) sampled softmax ends {100 * gap:+.1f}% from "
          f"full-softmax training; its loss fwd+bwd takes {fb_s / fb_f:.2f}x the time and a "
          f"whole step {step_s / step_f:.2f}x")
    return {"eval_full": eval_full, "eval_sampled": eval_sampled, "eval_torch": eval_torch,
            "fb_ratio": fb_s / fb_f,
            "step_ratio": step_s / step_f}


if __name__ == "__main__":
    main()
