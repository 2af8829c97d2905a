"""A 100,000-class linear classifier trained with sampled softmax and NCE, evaluated exactly.

The data are synthetic and Zipf-distributed, like words in text: class ``k``
(its frequency rank) appears with probability ``∝ log((k + 2) / (k + 1))``,
which is exactly the distribution ``xent``'s default ``"log_uniform"`` sampler
draws candidates from. Each example is a noisy copy of a hidden class vector.

Three runs of the same model, optimizer and batches:

* full softmax: ``xent.linear_cross_entropy(x, W, y, bias=b)``, the exact
  softmax cross-entropy over all classes without the ``[batch, classes]``
  logits in memory (the same value and gradients as
  ``sparse_softmax_cross_entropy(x @ W.T + b, y)``);
* sampled softmax: ``xent.sampled_softmax_loss`` with ``--num-sampled``
  shared candidates per step;
* NCE: ``xent.nce_loss`` with the same candidates count.

All three are evaluated on held-out data with the exact full softmax, again
``linear_cross_entropy`` (the sampled losses are training-only estimators), and
the script prints how close the sampled runs get to full-softmax training and
how much faster a step is. It also checks the exact evaluation against the
float64 cross-entropy of the materialized logits.

    python examples/large_vocabulary.py             # about a minute on 2 idle cores
    python examples/large_vocabulary.py --quick     # seconds: 2,000 classes, 30 steps
    XENT_EXAMPLE_QUICK=1 python examples/large_vocabulary.py   # the same
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from tqdm import tqdm

import xent


def zipf_labels(rng: np.random.Generator, n: int, num_classes: int) -> np.ndarray:
    """Class ids with ``P(k) = log((k + 2) / (k + 1)) / log(V + 1)`` (inverse CDF)."""
    u = rng.random(n)
    return (np.floor(np.exp(u * np.log(num_classes + 1))) - 1).astype(np.int64) % num_classes


def make_data(rng: np.random.Generator, n: int, centers: torch.Tensor, noise: float):
    y = zipf_labels(rng, n, centers.shape[0])
    x = centers[y] + noise * torch.from_numpy(rng.standard_normal((n, centers.shape[1]),
                                                                  dtype=np.float32))
    return x, torch.from_numpy(y)


@torch.no_grad()
def evaluate(W: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
             chunk: int = 512) -> tuple[float, float, float]:
    """Full-softmax cross-entropy (``linear_cross_entropy``), top-1 accuracy, and the
    float64 cross-entropy of the logits as a check, ``chunk`` rows of logits at a time."""
    loss = float(xent.linear_cross_entropy(x, W, y, bias=b))
    correct, naive = 0, 0.0
    for i in range(0, x.shape[0], chunk):
        logits = torch.addmm(b, x[i:i + chunk], W.T)
        correct += int((logits.argmax(dim=1) == y[i:i + chunk]).sum())
        z = logits.double()
        naive += float((torch.logsumexp(z, 1) - z.gather(1, y[i:i + chunk, None])[:, 0]).sum())
    return loss, correct / x.shape[0], naive / x.shape[0]


def train(method: str, args, data, seed: int = 0):
    """Train from the same initial weights on the same batches; return weights and timings."""
    torch.manual_seed(seed)
    V, D = args.classes, args.dim
    W = torch.nn.Parameter(0.01 * torch.randn(V, D))
    # Biases start at -log V (uniform, self-normalized scores): NCE needs it, since
    # classes it never samples keep their initial score; the others don't mind.
    b = torch.nn.Parameter(torch.full((V,), -float(np.log(V))))
    opt = torch.optim.Adam([W, b], lr=args.lr)
    gen = torch.Generator().manual_seed(seed)  # the candidates' random stream
    xs, ys = data
    loss_times, step_times = [], []
    bar = tqdm(range(args.steps), desc=f"{method:>15}", unit="step", leave=True)
    for step in bar:
        lo = (step * args.batch) % xs.shape[0]
        x, y = xs[lo:lo + args.batch], ys[lo:lo + args.batch]
        t0 = time.perf_counter()
        if method == "full softmax":
            loss = xent.linear_cross_entropy(x, W, y, bias=b)
        elif method == "sampled softmax":
            loss = xent.sampled_softmax_loss(x, W, y, bias=b, num_sampled=args.num_sampled,
                                             rng=gen)
        else:
            loss = xent.nce_loss(x, W, y, bias=b, num_sampled=args.num_sampled, rng=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        loss_times.append(time.perf_counter() - t0)
        opt.step()
        step_times.append(time.perf_counter() - t0)
        if step % 10 == 0:
            bar.set_postfix(train_loss=f"{loss.item():.3f}")
    return W.detach(), b.detach(), float(np.median(loss_times)), float(np.median(step_times))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   default=os.environ.get("XENT_EXAMPLE_QUICK", "") not in ("", "0"),
                   help="small sizes (also XENT_EXAMPLE_QUICK=1): a run of seconds")
    p.add_argument("--steps", type=int, default=None, help="training steps per method")
    p.add_argument("--classes", type=int, default=None)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--num-sampled", type=int, default=None)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--noise", type=float, default=0.7)
    p.add_argument("--eval-size", type=int, default=None)
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: torch's choice; 1 helps on a busy machine)")
    args = p.parse_args(argv)
    sizes = ({"steps": 30, "classes": 2000, "batch": 64, "num_sampled": 128, "eval_size": 512}
             if args.quick else
             {"steps": 200, "classes": 100_000, "batch": 128, "num_sampled": 1024,
              "eval_size": 4096})
    for k, v in sizes.items():  # explicit options win over either set of defaults
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.threads:
        torch.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    centers = torch.from_numpy(rng.standard_normal((args.classes, args.dim), dtype=np.float32))
    centers /= centers.norm(dim=1, keepdim=True) / 2.0
    train_data = make_data(rng, args.steps * args.batch, centers, args.noise)
    x_eval, y_eval = make_data(rng, args.eval_size, centers, args.noise)
    print(f"{args.classes:,} classes, {args.dim} features, batch {args.batch}, {args.steps} steps; "
          f"{len(np.unique(train_data[1].numpy())):,} distinct classes in the training data")

    results = {}
    for method in ("full softmax", "sampled softmax", "NCE"):
        W, b, loss_s, step_s = train(method, args, train_data)
        results[method] = (*evaluate(W, b, x_eval, y_eval), loss_s, step_s)

    base_loss, base_acc, _, base_fb, base_step = results["full softmax"]
    print(f"\n{'trained with':>16} {'eval CE (full softmax)':>23} {'accuracy':>9} "
          f"{'loss fwd+bwd ms':>16} {'step ms (with Adam)':>20}")
    for method, (loss, acc, _, fb_s, step_s) in results.items():
        print(f"{method:>16} {loss:23.4f} {acc:9.3f} {1e3 * fb_s:16.1f} {1e3 * step_s:20.1f}")
    print(f"(uniform guess: cross-entropy {np.log(args.classes):.4f})")
    for method, (loss, _, naive, _, _) in results.items():
        print(f"exact evaluation of the {method} run: linear_cross_entropy {loss:.6f}, "
              f"float64 logits {naive:.6f}")
    for method in ("sampled softmax", "NCE"):
        loss, acc, _, fb_s, step_s = results[method]
        print(f"{method}: eval cross-entropy {loss - base_loss:+.4f} nats from full-softmax "
              f"training ({100 * (loss / base_loss - 1):+.1f}%), accuracy {acc - base_acc:+.3f}; "
              f"the loss's forward+backward is {base_fb / fb_s:.0f}x faster and the whole step "
              f"{base_step / step_s:.1f}x ({args.num_sampled} of {args.classes:,} classes "
              "scored; Adam still updates every row).")


if __name__ == "__main__":
    main()
