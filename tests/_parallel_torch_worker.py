"""Worker of tests/test_parallel_torch.py: one gloo rank that runs every case.

Spawning ranks is the slow part, so one group per world size runs all cases;
each rank compares its value and its gradient slice with a float64
single-device reference and writes its failures to ``<outdir>/rank<r>.json``.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

import numpy as np


def _layouts(world, V):
    even = [V // world] * world
    even[-1] += V - sum(even)
    uneven = {2: [3, V - 3], 4: [1, 5, 2, V - 8]}[world]
    return {"even": even, "uneven": uneven}


OPTIONS = [
    dict(),
    dict(label_smoothing=0.2),
    dict(z_loss=1e-2),
    dict(class_weight=True),
    dict(class_weight=True, label_smoothing=0.1, z_loss=1e-3, sample_weight=True),
    dict(ignore_index=-100, label_smoothing=0.3),
    dict(ignore_index=-100, class_weight=True, sample_weight=True),
]
REDUCTIONS = ["none", "sum", "mean", "sum_over_batch_size", "sum_by_nonzero_weights", "norm"]


class Checker:
    def __init__(self, rank):
        self.rank = rank
        self.failures = []
        self.checks = 0

    def close(self, name, got, want, rtol=1e-9, atol=1e-9):
        self.checks += 1
        got = np.asarray(got, dtype=np.float64)
        want = np.asarray(want, dtype=np.float64)
        if got.shape != want.shape or not np.allclose(got, want, rtol=rtol, atol=atol,
                                                      equal_nan=True):
            err = (float(np.nanmax(np.abs(got - want))) if got.shape == want.shape
                   else f"shape {got.shape} vs {want.shape}")
            self.failures.append(f"{name}: max err {err}")

    def true(self, name, cond):
        self.checks += 1
        if not cond:
            self.failures.append(name)


def _case_data(rng, N, V, opts, scale, all_ignored, target_rank_classes):
    z = rng.standard_normal((N, V)) * scale
    t = rng.integers(0, V, size=N)
    if target_rank_classes is not None:  # every label on one rank's shard
        lo, hi = target_rank_classes
        t = rng.integers(lo, hi, size=N)
    ig = opts.get("ignore_index")
    if ig is not None:
        t[1] = ig
        t[4] = ig
        if all_ignored:
            t[:] = ig
    cw = rng.uniform(0.2, 2.0, size=V) if opts.get("class_weight") else None
    sw = rng.uniform(0.0, 1.5, size=N) if opts.get("sample_weight") else None
    if sw is not None:
        sw[2] = 0.0
        z[2] = np.nan  # NaN padding under zero weight
    if ig is not None:
        z[1] = np.nan
    return z, t, cw, sw


def run_dense(ck, torch, dist, xent, xp, rank, world):
    from xent import parallel as P

    rng_case = np.random.default_rng(1234)
    N, V = 6, 13
    for lname, sizes in _layouts(world, V).items():
        starts = np.cumsum([0] + sizes[:-1])
        my0, my1 = int(starts[rank]), int(starts[rank] + sizes[rank])
        for oi, opts in enumerate(OPTIONS):
            for red in REDUCTIONS:
                for variant in ("plain", "scaled", "first", "last", "allign", "vstart"):
                    if variant == "allign" and opts.get("ignore_index") is None:
                        continue
                    scale = 1000.0 if variant == "scaled" else 3.0
                    tr = {"first": (0, sizes[0]),
                          "last": (V - sizes[-1], V)}.get(variant)
                    z, t, cw, sw = _case_data(rng_case, N, V, opts, scale, variant == "allign",
                                              tr)
                    name = f"dense/{lname}/opt{oi}/{red}/{variant}"
                    kw = {k: v for k, v in opts.items()
                          if k in ("label_smoothing", "z_loss", "ignore_index")}
                    ref_kw = dict(kw)
                    if cw is not None:
                        ref_kw["class_weight"] = torch.tensor(cw)
                    if sw is not None:
                        ref_kw["sample_weight"] = torch.tensor(sw)
                    # float64 single-device reference (torch autograd)
                    zf = torch.tensor(z, requires_grad=True)
                    tt = torch.tensor(t)
                    norm = 5.5
                    if red == "norm":
                        lref = xent.sparse_softmax_cross_entropy(zf, tt, reduction="sum",
                                                                 **ref_kw) / norm
                    else:
                        lref = xent.sparse_softmax_cross_entropy(zf, tt, reduction=red,
                                                                 **ref_kw)
                    up = torch.tensor(rng_case.standard_normal(lref.shape))
                    (lref * up).sum().backward()
                    gref = zf.grad[:, my0:my1].numpy()
                    # the sharded call
                    zl = torch.tensor(z[:, my0:my1], requires_grad=True)
                    pkw = dict(kw)
                    if cw is not None:
                        pkw["class_weight"] = torch.tensor(cw[my0:my1])
                    if sw is not None:
                        pkw["sample_weight"] = torch.tensor(sw)
                    if variant == "vstart":
                        pkw["vocab_start"] = my0
                    if red == "norm":
                        out = P.vocab_parallel_cross_entropy(zl, tt, normalizer=norm, **pkw)
                    else:
                        out = P.vocab_parallel_cross_entropy(zl, tt, reduction=red, **pkw)
                    (out * up).sum().backward()
                    ck.close(name + "/value", out.detach().numpy(), lref.detach().numpy())
                    ck.close(name + "/grad", zl.grad.numpy(), gref)
                    # identical on every rank
                    gathered = [torch.empty_like(out.detach()) for _ in range(world)]
                    dist.all_gather(gathered, out.detach().contiguous())
                    ck.true(name + "/same-on-every-rank",
                            all(torch.equal(g, gathered[0]) for g in gathered))
    # peer: torch's own F.cross_entropy (mean, class weights, smoothing, ignore)
    F = torch.nn.functional
    sizes = _layouts(world, V)["uneven"]
    starts = np.cumsum([0] + sizes[:-1])
    my0, my1 = int(starts[rank]), int(starts[rank] + sizes[rank])
    rng = np.random.default_rng(7)
    z = rng.standard_normal((N, V)) * 4
    t = rng.integers(0, V, size=N)
    t[0] = -100
    cw = rng.uniform(0.5, 2.0, size=V)
    zf = torch.tensor(z, requires_grad=True)
    peer = F.cross_entropy(zf, torch.tensor(t), weight=torch.tensor(cw), ignore_index=-100,
                           label_smoothing=0.25)
    peer.backward()
    zl = torch.tensor(z[:, my0:my1], requires_grad=True)
    out = P.vocab_parallel_cross_entropy(zl, torch.tensor(t), class_weight=torch.tensor(
        cw[my0:my1]), ignore_index=-100, label_smoothing=0.25)
    out.backward()
    ck.close("peer/F.cross_entropy/value", out.detach(), peer.detach())
    ck.close("peer/F.cross_entropy/grad", zl.grad, zf.grad[:, my0:my1])
    # 16-bit logits: float32 statistics over gloo (which cannot all-reduce bfloat16)
    for dt in (torch.bfloat16, torch.float16):
        zb = torch.tensor(z[:, my0:my1]).to(dt).requires_grad_(True)
        out = P.vocab_parallel_cross_entropy(zb, torch.tensor(t), ignore_index=-100,
                                             z_loss=1e-3)
        out.backward()
        zr = torch.tensor(z).to(dt).double().requires_grad_(True)
        ref = xent.sparse_softmax_cross_entropy(zr, torch.tensor(t), ignore_index=-100,
                                                z_loss=1e-3)
        ref.backward()
        ck.true(f"lowp/{dt}/dtype", out.dtype == dt and zb.grad.dtype == dt)
        ck.close(f"lowp/{dt}/value", out.detach().float(), ref.detach(), rtol=1e-2, atol=1e-2)
        ck.close(f"lowp/{dt}/grad", zb.grad.float(), zr.grad[:, my0:my1], rtol=2e-2, atol=2e-3)
    # leading axes [B, T, V_local]
    z3 = rng.standard_normal((2, 3, V))
    t3 = rng.integers(0, V, size=(2, 3))
    zf = torch.tensor(z3, requires_grad=True)
    ref = xent.sparse_softmax_cross_entropy(zf, torch.tensor(t3), reduction="none")
    zl = torch.tensor(z3[..., my0:my1])
    out = P.vocab_parallel_cross_entropy(zl, torch.tensor(t3), reduction="none")
    ck.close("leading-axes/value", out, ref.detach())


class CountCollectives:
    """Counts calls of torch.distributed's collectives inside a ``with`` block."""

    NAMES = ("all_reduce", "all_gather", "all_gather_into_tensor", "broadcast", "reduce_scatter")

    def __init__(self, dist):
        self.dist, self.calls, self.orig = dist, [], {}

    def __enter__(self):
        for name in self.NAMES:
            fn = getattr(self.dist, name, None)
            if fn is not None:
                self.orig[name] = fn
                setattr(self.dist, name, self._wrap(name, fn))
        return self

    def _wrap(self, name, fn):
        def wrapped(*a, **k):
            self.calls.append(name)
            return fn(*a, **k)
        return wrapped

    def __exit__(self, *exc):
        for name, fn in self.orig.items():
            setattr(self.dist, name, fn)


def run_collective_counts(ck, torch, dist, xent, rank, world):
    """Forward: one all-gather and two all-reduces; backward: none (linear: the dx one)."""
    from xent import parallel as P

    z = torch.randn(4, 3, requires_grad=True)
    t = torch.tensor([0, 1, 3 * world - 1, 2])
    with CountCollectives(dist) as fwd:
        loss = P.vocab_parallel_cross_entropy(z, t, label_smoothing=0.1, class_weight=torch.ones(3))
    with CountCollectives(dist) as bwd:
        loss.backward()
    ck.true(f"counts/dense/forward {fwd.calls}",
            sorted(fwd.calls) == ["all_gather", "all_reduce", "all_reduce"])
    ck.true(f"counts/dense/backward {bwd.calls}", bwd.calls == [])
    for rig, want in ((True, ["all_reduce"]), (False, [])):
        x = torch.randn(4, 2, requires_grad=True)
        W = torch.randn(3, 2, requires_grad=True)
        loss = P.vocab_parallel_linear_cross_entropy(x, W, t, reduce_input_grad=rig)
        with CountCollectives(dist) as bwd:
            loss.backward()
        ck.true(f"counts/linear/backward rig={rig} {bwd.calls}", bwd.calls == want)


def run_linear(ck, torch, dist, xent, rank, world):
    from xent import parallel as P

    rng = np.random.default_rng(99)
    N, D, V = 6, 4, 13
    sizes = _layouts(world, V)["uneven"]
    starts = np.cumsum([0] + sizes[:-1])
    my0, my1 = int(starts[rank]), int(starts[rank] + sizes[rank])
    cases = [
        dict(),
        dict(label_smoothing=0.2, z_loss=1e-2),
        dict(class_weight=True, ignore_index=-100, sample_weight=True, label_smoothing=0.1),
        dict(logit_softcap=5.0, bias=True),
        dict(bias=True, class_weight=True, z_loss=1e-3, chunk_size=2),
    ]
    for ci, opts in enumerate(cases):
        for red in ("none", "mean", "sum_by_nonzero_weights", "norm"):
            for rig in (True, False):
                x = rng.standard_normal((N, D)) * 2
                W = rng.standard_normal((V, D)) * 2
                b = rng.standard_normal(V) if opts.get("bias") else None
                t = rng.integers(0, V, size=N)
                if opts.get("ignore_index") is not None:
                    t[0] = -100
                cw = rng.uniform(0.2, 2.0, V) if opts.get("class_weight") else None
                sw = rng.uniform(0.0, 2.0, N) if opts.get("sample_weight") else None
                kw = {k: opts[k] for k in ("label_smoothing", "z_loss", "ignore_index",
                                           "logit_softcap") if k in opts}
                xf = torch.tensor(x, requires_grad=True)
                Wf = torch.tensor(W, requires_grad=True)
                bf = None if b is None else torch.tensor(b, requires_grad=True)
                rk = dict(kw)
                if cw is not None:
                    rk["class_weight"] = torch.tensor(cw)
                if sw is not None:
                    rk["sample_weight"] = torch.tensor(sw)
                tt = torch.tensor(t)
                ref = xent.linear_cross_entropy(xf, Wf, tt, bias=bf,
                                                reduction="sum" if red == "norm" else red, **rk)
                if red == "norm":
                    ref = ref / 3.0
                up = torch.tensor(rng.standard_normal(ref.shape))
                (ref * up).sum().backward()
                xl = torch.tensor(x, requires_grad=True)
                Wl = torch.tensor(W[my0:my1], requires_grad=True)
                bl = None if b is None else torch.tensor(b[my0:my1], requires_grad=True)
                pk = dict(kw)
                if cw is not None:
                    pk["class_weight"] = torch.tensor(cw[my0:my1])
                if sw is not None:
                    pk["sample_weight"] = torch.tensor(sw)
                if "chunk_size" in opts:
                    pk["chunk_size"] = opts["chunk_size"]
                if red == "norm":
                    out = P.vocab_parallel_linear_cross_entropy(
                        xl, Wl, tt, bias=bl, normalizer=3.0, reduce_input_grad=rig, **pk)
                else:
                    out = P.vocab_parallel_linear_cross_entropy(
                        xl, Wl, tt, bias=bl, reduction=red, reduce_input_grad=rig, **pk)
                (out * up).sum().backward()
                name = f"linear/case{ci}/{red}/rig={rig}"
                ck.close(name + "/value", out.detach(), ref.detach())
                ck.close(name + "/dW", Wl.grad, Wf.grad[my0:my1])
                if bl is not None:
                    ck.close(name + "/db", bl.grad, bf.grad[my0:my1])
                gx = xl.grad.clone()
                if not rig:
                    dist.all_reduce(gx)
                ck.close(name + "/dx", gx, xf.grad)


def run_errors(ck, torch, dist, xent, rank, world):
    from xent import parallel as P

    V = 4 * world
    z = torch.zeros((3, 4))
    t = torch.tensor([0, 1, V - 1])

    def expect(name, fn, needle):
        try:
            fn()
        except ValueError as e:
            ck.true(f"{name}: message {e!s:.200}", needle in str(e))
        except Exception as e:  # noqa: BLE001
            ck.failures.append(f"{name}: {type(e).__name__}: {e}")
        else:
            ck.failures.append(f"{name}: no error")

    expect("overlap", lambda: P.vocab_parallel_cross_entropy(
        z, t, vocab_start=0 if rank < 2 else 4 * rank), "tile")
    expect("gap", lambda: P.vocab_parallel_cross_entropy(
        z, t, vocab_start=4 * rank + (1 if rank == world - 1 else 0)), "tile")
    expect("mixed", lambda: P.vocab_parallel_cross_entropy(
        z, t, vocab_start=None if rank == 0 else 4 * rank), "every rank or on none")
    expect("label", lambda: P.vocab_parallel_cross_entropy(z, torch.tensor([0, V, 1])),
           f"[0, {V})")
    # an argument error on one rank only: that rank raises its own, the others say so
    cw = torch.ones(4) if rank else torch.ones(3)
    expect("one-rank", lambda: P.vocab_parallel_cross_entropy(z, t, class_weight=cw),
           "class_weight" if rank == 0 else "rank(s) [0]")
    # the group still works afterwards
    out = P.vocab_parallel_cross_entropy(z, t)
    ck.close("after-errors", out, np.log(V), rtol=1e-6)


def run_data_parallel(ck, torch, dist, xent, rank, world):
    """4 ranks, uneven valid tokens, two micro-batches: exactly the global mean."""
    from xent import parallel as P

    rng = np.random.default_rng(5)
    V = 7
    sizes = [(5, 3), (2, 6), (4, 4), (6, 1)]
    data = []
    for r in range(world):
        mbs = []
        for n in sizes[r % len(sizes)]:
            z = rng.standard_normal((n, V)) * 3
            t = rng.integers(0, V, size=n)
            t[rng.uniform(size=n) < 0.4] = -100
            mbs.append((z, t))
        data.append(mbs)
    cw = rng.uniform(0.5, 2.0, V)
    # single-device global reference
    allz = np.concatenate([z for mbs in data for z, _ in mbs])
    allt = np.concatenate([t for mbs in data for _, t in mbs])
    zf = torch.tensor(allz, requires_grad=True)
    ref = xent.sparse_softmax_cross_entropy(zf, torch.tensor(allt), ignore_index=-100,
                                            class_weight=torch.tensor(cw), label_smoothing=0.1)
    ref.backward()
    singles = [dist.new_group([r]) for r in range(world)]
    mine = data[rank]
    local = P.count(torch.tensor(mine[0][1]), ignore_index=-100, class_weight=torch.tensor(cw))
    want_local = float(((mine[0][1] >= 0) * cw[np.where(mine[0][1] < 0, 0, mine[0][1])]).sum())
    ck.close("dp/count-local-without-group", local, want_local)
    norm = sum(P.count(torch.tensor(t), ignore_index=-100, class_weight=torch.tensor(cw),
                       group=dist.group.WORLD) for _, t in mine)  # summed over the ranks
    total = 0.0
    grads = []
    offset = sum(z.shape[0] for mbs in data[:rank] for z, _ in mbs)
    for z, t in mine:
        zl = torch.tensor(z, requires_grad=True)
        loss = P.vocab_parallel_cross_entropy(zl, torch.tensor(t), group=singles[rank],
                                              ignore_index=-100, class_weight=torch.tensor(cw),
                                              label_smoothing=0.1, normalizer=norm)
        loss.backward()
        total = total + loss.detach()
        grads.append(zl.grad)
        # the same with an ordinary xent loss: reduction="sum" / count
        plain = xent.sparse_softmax_cross_entropy(
            torch.tensor(z), torch.tensor(t), ignore_index=-100, class_weight=torch.tensor(cw),
            label_smoothing=0.1, reduction="sum") / norm
        ck.close("dp/plain-sum-over-count", plain, loss.detach())
    total = total.clone()
    dist.all_reduce(total)
    ck.close("dp/value", total, ref.detach(), rtol=1e-12)
    n_mine = sum(z.shape[0] for z, _ in mine)
    ck.close("dp/grad", torch.cat(grads), zf.grad[offset:offset + n_mine], rtol=1e-12)
    want = float((torch.tensor(cw)[torch.tensor(np.where(allt < 0, 0, allt))]
                  * torch.tensor(allt >= 0)).sum())
    ck.close("dp/count", norm, want)


def main(rank, world, port, outdir, parts):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    import datetime

    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    import xent

    ck = Checker(rank)
    try:
        for part in parts:
            {"dense": lambda: run_dense(ck, torch, dist, xent, None, rank, world),
             "linear": lambda: run_linear(ck, torch, dist, xent, rank, world),
             "errors": lambda: run_errors(ck, torch, dist, xent, rank, world),
             "dp": lambda: run_data_parallel(ck, torch, dist, xent, rank, world),
             "counts": lambda: run_collective_counts(ck, torch, dist, xent, rank, world),
             }[part]()
    except Exception:  # noqa: BLE001
        ck.failures.append(traceback.format_exc())
    with open(os.path.join(outdir, f"rank{rank}.json"), "w") as f:
        json.dump({"failures": ck.failures, "checks": ck.checks}, f)
    try:
        dist.destroy_process_group()
    except Exception:  # noqa: BLE001
        pass


if __name__ == "__main__":  # python tests/_parallel_torch_worker.py RANK WORLD PORT OUT PARTS
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4],
         sys.argv[5].split(","))
