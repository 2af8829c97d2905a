"""PyTorch modules: ``xent.torch``'s drop-in losses against torch's own modules.

Groups (``--group modules`` runs all three), float32, mean reduction:

* ``modules_ce``: ``xent.torch.CrossEntropyLoss()`` vs ``torch.nn.CrossEntropyLoss()``,
  logits ``[n, c]``, integer targets with a few ``-100``;
* ``modules_bce``: ``xent.torch.BCEWithLogitsLoss(pos_weight=...)`` vs
  ``torch.nn.BCEWithLogitsLoss(pos_weight=...)``, logits and targets ``[n, c]``;
* ``modules_linear``: ``xent.torch.LinearCrossEntropyLoss(d, v)`` vs torch's
  chunked ``torch.nn.LinearCrossEntropyLoss(d, v,
  options=torch.nn.LinearCrossEntropyOptions())`` (``nn.LinearCrossEntropyOptions``
  is torch 2.13's switch to its chunked path; ``options=None`` is its reference
  path that builds the logits), same weights, inputs ``[n, d]``.

A backward step returns the gradients of the loss with respect to the inputs
(and the classifier for the linear group) through ``torch.autograd.grad``.
"""

from __future__ import annotations

import numpy as np

from ..registry import case

CE_SIZES = {"quick": [dict(n=512, c=2048)], "full": [dict(n=8192, c=32768)],
            "sweep": [dict(n=8192, c=1024), dict(n=8192, c=32768)]}
LIN_SIZES = {"quick": [dict(n=512, d=128, v=4096)], "full": [dict(n=4096, d=1024, v=65536)],
             "sweep": [dict(n=4096, d=1024, v=16384), dict(n=4096, d=1024, v=65536)]}


def _bytes_nc(size):
    return size["n"] * size["c"] * 4


def _bytes_nv(size):
    return size["n"] * size["v"] * 4


def _dense_step(size, backward, make, binary):
    import torch

    rng = np.random.default_rng(0)
    n, c = size["n"], size["c"]
    x = torch.from_numpy(rng.standard_normal((n, c), dtype=np.float32))
    if binary:
        t = torch.from_numpy(rng.random((n, c), dtype=np.float32))
    else:
        t = torch.from_numpy(rng.integers(0, c, size=n).astype(np.int64))
        t[::17] = -100
    module = make(torch, c)
    if backward:
        x.requires_grad_(True)

        def step():
            return torch.autograd.grad(module(x, t), (x,))
    else:
        def step():
            with torch.no_grad():
                return module(x, t).item()
    return step


@case(group="modules_ce", impl="torch nn.CrossEntropyLoss", peer=True, sizes=CE_SIZES,
      input_bytes=_bytes_nc)
def ce_torch(size, backward):
    return _dense_step(size, backward, lambda torch, c: torch.nn.CrossEntropyLoss(), False)


@case(group="modules_ce", impl="xent.torch.CrossEntropyLoss", sizes=CE_SIZES,
      input_bytes=_bytes_nc)
def ce_xent(size, backward):
    import xent.torch as xt

    return _dense_step(size, backward, lambda torch, c: xt.CrossEntropyLoss(), False)


def _pos_weight(torch, c):
    return torch.linspace(0.5, 2.0, c)


@case(group="modules_bce", impl="torch nn.BCEWithLogitsLoss", peer=True, sizes=CE_SIZES,
      input_bytes=_bytes_nc)
def bce_torch(size, backward):
    return _dense_step(size, backward, lambda torch, c: torch.nn.BCEWithLogitsLoss(
        pos_weight=_pos_weight(torch, c)), True)


@case(group="modules_bce", impl="xent.torch.BCEWithLogitsLoss", sizes=CE_SIZES,
      input_bytes=_bytes_nc)
def bce_xent(size, backward):
    import xent.torch as xt

    return _dense_step(size, backward, lambda torch, c: xt.BCEWithLogitsLoss(
        pos_weight=_pos_weight(torch, c)), True)


def _linear_step(size, backward, module):
    import torch

    rng = np.random.default_rng(0)
    n, d, v = size["n"], size["d"], size["v"]
    with torch.no_grad():
        module.linear.weight.copy_(torch.from_numpy(
            rng.standard_normal((v, d), dtype=np.float32) / np.sqrt(d)))
    x = torch.from_numpy(rng.standard_normal((n, d), dtype=np.float32))
    t = torch.from_numpy(rng.integers(0, v, size=n).astype(np.int64))
    W = module.linear.weight
    if backward:
        x.requires_grad_(True)

        def step():
            return torch.autograd.grad(module(x, t), (x, W))
    else:
        def step():
            with torch.no_grad():
                return module(x, t).item()
    return step


@case(group="modules_linear", impl="torch nn.LinearCrossEntropyLoss(chunked)", peer=True,
      sizes=LIN_SIZES, input_bytes=_bytes_nv,
      note="options=nn.LinearCrossEntropyOptions(): torch's chunked path")
def linear_torch(size, backward):
    import torch

    m = torch.nn.LinearCrossEntropyLoss(size["d"], size["v"],
                                        options=torch.nn.LinearCrossEntropyOptions())
    return _linear_step(size, backward, m)


@case(group="modules_linear", impl="xent.torch.LinearCrossEntropyLoss", sizes=LIN_SIZES,
      input_bytes=_bytes_nv)
def linear_xent(size, backward):
    import xent.torch as xt

    return _linear_step(size, backward, xt.LinearCrossEntropyLoss(size["d"], size["v"]))
