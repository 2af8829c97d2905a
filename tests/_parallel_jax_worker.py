"""Worker of tests/test_parallel_jax.py, run in a subprocess with 4 host devices.

Prints one JSON line: {"checks": n, "failures": [...]}.
"""

from __future__ import annotations

import json
import os
import re
import traceback

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + \
    " --xla_force_host_platform_device_count=4"

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import xent  # noqa: E402
from xent import parallel as XP  # noqa: E402

failures: list[str] = []
checks = 0


def close(name, got, want, rtol=1e-9, atol=1e-9):
    global checks
    checks += 1
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    if got.shape != want.shape or not np.allclose(got, want, rtol=rtol, atol=atol,
                                                  equal_nan=True):
        err = (float(np.nanmax(np.abs(got - want))) if got.shape == want.shape
               else f"shape {got.shape} vs {want.shape}")
        failures.append(f"{name}: {err}")


def true(name, cond):
    global checks
    checks += 1
    if not cond:
        failures.append(name)


def collectives(hlo: str) -> dict:
    return {op: len(re.findall(rf"\b{op}(?:-start)?\(", hlo))
            for op in ("all-reduce", "all-gather", "all-to-all", "collective-permute",
                       "reduce-scatter")}


mesh = jax.sharding.Mesh(np.array(jax.devices()), ("v",))
N, VL = 6, 3
V = 4 * VL
rng = np.random.default_rng(0)

OPTIONS = [
    dict(),
    dict(label_smoothing=0.2, z_loss=1e-2),
    dict(class_weight=True, ignore_index=-100, sample_weight=True, label_smoothing=0.1),
]


REDS = ("none", "mean", "sum_over_batch_size", "sum_by_nonzero_weights", "norm")


def dense_cases():
    """One compiled program per option set: every reduction at once, one upstream each."""
    for oi, opts in enumerate(OPTIONS):
        scale = 1000.0 if oi == 1 else 3.0
        z = rng.standard_normal((N, V)) * scale
        t = rng.integers(0, V, size=N)
        t[0], t[-1] = 0, V - 1  # first and last shard
        kw = {k: opts[k] for k in ("label_smoothing", "z_loss", "ignore_index") if k in opts}
        if "ignore_index" in kw:
            t[2] = -100
        cw = jnp.asarray(rng.uniform(0.2, 2, V)) if opts.get("class_weight") else None
        sw = jnp.asarray(rng.uniform(0, 2, N)) if opts.get("sample_weight") else None
        ups = [jnp.asarray(rng.standard_normal(N if red == "none" else ())) for red in REDS]
        tj = jnp.asarray(t)

        def ref(z_):
            outs = []
            for red, up in zip(REDS, ups):
                out = xent.sparse_softmax_cross_entropy(
                    z_, tj, class_weight=cw, sample_weight=sw,
                    reduction="sum" if red == "norm" else red, **kw)
                outs.append(jnp.sum((out / 4.0 if red == "norm" else out) * up))
            return jnp.stack(outs)

        def local(z_, cw_):
            outs = []
            for red, up in zip(REDS, ups):
                pk = dict(kw, normalizer=4.0) if red == "norm" else dict(kw, reduction=red)
                out = XP.vocab_parallel_cross_entropy(
                    z_, tj, axis_name="v", class_weight=None if cw is None else cw_,
                    sample_weight=sw, **pk)
                outs.append(jnp.sum(out * up))
            return jnp.stack(outs)

        f = jax.shard_map(local, mesh=mesh, in_specs=(P(None, "v"), P("v")), out_specs=P())
        cw_ = cw if cw is not None else jnp.zeros((V,))
        zj = jnp.asarray(z)
        name = f"jax/dense/opt{oi}"
        v1 = jax.jit(lambda a: f(a, cw_))(zj)
        v0 = jax.jit(ref)(zj)
        close(name + "/values", v1, v0)
        # gradients: one reduction-weighted sum (each reduction's own upstream above)
        mix = jnp.asarray(rng.standard_normal(len(REDS)))
        par_s = jax.jit(jax.value_and_grad(lambda a: jnp.sum(f(a, cw_) * mix)))
        _, g1 = par_s(zj)
        _, g0 = jax.jit(jax.value_and_grad(lambda a: jnp.sum(ref(a) * mix)))(zj)
        close(name + "/grad", g1, g0)
        if oi == 1:
            for red_i, red in enumerate(REDS):  # "none" and normalizer= on their own too
                if red not in ("none", "norm"):
                    continue
                e = jnp.zeros(len(REDS)).at[red_i].set(1.0)
                _, g1 = jax.jit(jax.value_and_grad(lambda a: jnp.sum(f(a, cw_) * e)))(zj)
                _, g0 = jax.jit(jax.value_and_grad(lambda a: jnp.sum(ref(a) * e)))(zj)
                close(name + f"/grad/{red}", g1, g0)
            hlo = par_s.lower(zj).compile().as_text()
            c = collectives(hlo)
            # five losses, each one pmax and one psum (XLA may combine them): <= 10
            true(f"jax/dense/collectives {c}",
                 c["all-gather"] == 0 and c["all-reduce"] <= 2 * len(REDS)
                 and c["all-to-all"] == 0 and c["reduce-scatter"] == 0)
        if oi == 0:  # one loss: exactly its two all-reduces, none in the backward pass
            one = jax.jit(jax.value_and_grad(lambda a: jax.shard_map(
                lambda b: XP.vocab_parallel_cross_entropy(b, tj, axis_name="v"), mesh=mesh,
                in_specs=P(None, "v"), out_specs=P())(a)))
            c = collectives(one.lower(zj).compile().as_text())
            true(f"jax/dense/two-all-reduces {c}", c["all-reduce"] <= 2 and c["all-gather"] == 0)


def linear_cases():
    D = 4
    for ci, opts in enumerate([dict(), dict(label_smoothing=0.2, z_loss=1e-2, bias=True),
                               dict(class_weight=True, ignore_index=-100, logit_softcap=4.0,
                                    chunk_size=2)]):
        x = jnp.asarray(rng.standard_normal((N, D)) * 2)
        W = jnp.asarray(rng.standard_normal((V, D)) * 2)
        b = jnp.asarray(rng.standard_normal(V)) if opts.get("bias") else None
        t = rng.integers(0, V, size=N)
        kw = {k: opts[k] for k in ("label_smoothing", "z_loss", "ignore_index", "logit_softcap")
              if k in opts}
        if "ignore_index" in kw:
            t[1] = -100
        tj = jnp.asarray(t)
        cw = jnp.asarray(rng.uniform(0.2, 2, V)) if opts.get("class_weight") else None
        ck = opts.get("chunk_size")

        def ref(x_, W_, b_):
            return xent.linear_cross_entropy(x_, W_, tj, bias=b_, class_weight=cw, **kw)

        def par(x_, W_, b_):
            def local(xa, Wa, ba, ca):
                return XP.vocab_parallel_linear_cross_entropy(
                    xa, Wa, tj, axis_name="v", bias=None if b is None else ba,
                    class_weight=None if cw is None else ca, chunk_size=ck, **kw)

            f = jax.shard_map(local, mesh=mesh, in_specs=(P(), P("v", None), P("v"), P("v")),
                              out_specs=P())
            return f(x_, W_, jnp.zeros((V,)) if b_ is None else b_,
                     jnp.zeros((V,)) if cw is None else cw)

        bb = jnp.zeros((V,)) if b is None else b
        v1, g1 = jax.jit(jax.value_and_grad(par, argnums=(0, 1, 2)))(x, W, bb)
        v0, g0 = jax.value_and_grad(ref, argnums=(0, 1, 2))(x, W, bb if b is not None else None
                                                             ) if b is not None else \
            (lambda r: (r[0], (r[1][0], r[1][1], None)))(
                jax.value_and_grad(lambda a, c: ref(a, c, None), argnums=(0, 1))(x, W))
        name = f"jax/linear/case{ci}"
        close(name + "/value", v1, v0)
        close(name + "/dx", g1[0], g0[0])
        close(name + "/dW", g1[1], g0[1])
        if b is not None:
            close(name + "/db", g1[2], g0[2])


def bad_layout():
    z = jnp.zeros((2, V))
    t = jnp.asarray([0, 1])

    def local(a):
        start = lax_index() * VL
        start = jnp.where(start == VL, 0, start)  # two shards claim class 0: an overlap
        return XP.vocab_parallel_cross_entropy(a, t, axis_name="v", vocab_start=start)

    def lax_index():
        return jax.lax.axis_index("v")

    out = jax.shard_map(local, mesh=mesh, in_specs=P(None, "v"), out_specs=P())(z)
    true(f"jax/bad-layout-is-nan {out}", bool(jnp.isnan(out)))

    def good(a):
        return XP.vocab_parallel_cross_entropy(a, t, axis_name="v",
                                               vocab_start=jax.lax.axis_index("v") * VL)

    out = jax.shard_map(good, mesh=mesh, in_specs=P(None, "v"), out_specs=P())(z)
    close("jax/explicit-layout", out, np.log(V))

    def bad_label(a):
        return XP.vocab_parallel_cross_entropy(a, jnp.asarray([0, V]), axis_name="v")

    out = jax.shard_map(bad_label, mesh=mesh, in_specs=P(None, "v"), out_specs=P())(z)
    true("jax/bad-label-is-nan", bool(jnp.isnan(out)))


def data_parallel():
    """Ordinary losses, batch-sharded NamedSharding under jit: single-device values, no gather."""
    sh = NamedSharding(mesh, P("v"))
    sh2 = NamedSharding(mesh, P("v", None))
    rep = NamedSharding(mesh, P())
    n, c, d = 16, 11, 5
    z = rng.standard_normal((n, c)) * 3
    t = rng.integers(0, c, size=n)
    t[:5] = -100  # uneven valid tokens per device
    y = jax.nn.softmax(jnp.asarray(rng.standard_normal((n, c))))
    x = rng.standard_normal((n, d))
    W = rng.standard_normal((c, d))
    cases = {
        "sparse": (lambda z_, t_: xent.sparse_softmax_cross_entropy(
            z_, t_, ignore_index=-100, label_smoothing=0.1, z_loss=1e-3),
            (jnp.asarray(z), jnp.asarray(t)), (sh2, sh)),
        "dense": (lambda z_, y_: xent.softmax_cross_entropy(z_, y_),
                  (jnp.asarray(z), y), (sh2, sh2)),
        "linear": (lambda x_, W_, t_: xent.linear_cross_entropy(x_, W_, t_, ignore_index=-100),
                   (jnp.asarray(x), jnp.asarray(W), jnp.asarray(t)), (sh2, rep, sh)),
    }
    for name, (f, args, shardings) in cases.items():
        want_v, want_g = jax.value_and_grad(f)(*args)
        placed = [jax.device_put(a, s_) for a, s_ in zip(args, shardings)]
        g = jax.jit(jax.value_and_grad(f))
        got_v, got_g = g(*placed)
        close(f"dp/{name}/value", got_v, want_v, rtol=1e-12)
        close(f"dp/{name}/grad", got_g, want_g, rtol=1e-12)
        true(f"dp/{name}/grad-stays-sharded {got_g.sharding}",
             got_g.sharding.spec[0] == "v" if hasattr(got_g.sharding, "spec") else True)
        hlo = g.lower(*placed).compile().as_text()
        c = collectives(hlo)
        true(f"dp/{name}/no-all-gather {c}", c["all-gather"] == 0 and c["all-to-all"] == 0)
    # count summed over the mesh axis inside shard_map: the global denominator
    cnt = jax.shard_map(lambda t_: XP.count(t_, ignore_index=-100, axis_name="v"), mesh=mesh,
                        in_specs=P("v"), out_specs=P())(jnp.asarray(t))
    close("dp/count-psum", cnt, float((t != -100).sum()))


try:
    dense_cases()
    linear_cases()
    bad_layout()
    data_parallel()
except Exception:  # noqa: BLE001
    failures.append(traceback.format_exc())
print(json.dumps({"checks": checks, "failures": failures}))
