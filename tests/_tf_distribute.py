"""Run in a subprocess: MirroredStrategy on 4 logical CPUs. Each replica's loss with
``normalizer=`` the global count (``xent.parallel.count``, summed over the replicas inside
the replica context) is its share of the global mean: the replicas' losses and gradients sum
to the global mean and its gradient, checked against a float64 single-device computation
with TF's own op. Also shows that ``tf.nn.compute_average_loss`` (global batch size) is
another number when labels are ignored or weighted. Prints OK and the replica count."""
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 4)
import xent  # noqa: E402
import xent.parallel  # noqa: E402

rng = np.random.default_rng(0)
B, C = 16, 5
z = rng.normal(size=(B, C)).astype("float32")
t = rng.integers(0, C, B)
t[3] = t[9] = -100
sw = rng.random(B).astype("float32")
w0 = (np.eye(C) + 0.1 * rng.normal(size=(C, C))).astype("float32")
strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(4)])
with strategy.scope():
    w = tf.Variable(w0)


def replica_step(zb, tb, swb):
    # the global count: each replica's local count, all-reduced over the replicas
    n_global = xent.parallel.count(tb, ignore_index=-100, sample_weight=swb)
    with tf.GradientTape() as tape:
        loss = xent.sparse_softmax_cross_entropy(zb @ w, tb, ignore_index=-100,
                                                 sample_weight=swb, normalizer=n_global)
        naive = tf.nn.compute_average_loss(
            xent.sparse_softmax_cross_entropy(zb @ w, tb, ignore_index=-100,
                                              sample_weight=swb, reduction="none"),
            global_batch_size=B)
    return loss, naive, n_global, tape.gradient(loss, w)


ds = tf.data.Dataset.from_tensor_slices((z, t, sw)).batch(B)
dist = strategy.experimental_distribute_dataset(ds)
for zb, tb, swb in dist:
    loss, naive, n, g = strategy.run(tf.function(replica_step), args=(zb, tb, swb))
    total = strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None).numpy()
    naive_total = strategy.reduce(tf.distribute.ReduceOp.SUM, naive, axis=None).numpy()
    counts = [float(v) for v in strategy.experimental_local_results(n)]
    grads = [v.numpy() for v in strategy.experimental_local_results(g)]

# float64, one device, TF's own op: the weighted mean over the non-ignored labels
keep = t != -100
w64 = tf.Variable(w0.astype(np.float64))
with tf.GradientTape() as tape:
    per = tf.nn.sparse_softmax_cross_entropy_with_logits(
        t[keep], tf.constant(z[keep], tf.float64) @ w64)
    want = tf.reduce_sum(per * sw[keep].astype(np.float64)) / np.sum(sw[keep], dtype=np.float64)
gw = tape.gradient(want, w64).numpy()

assert len(counts) == 4 and np.allclose(counts, np.sum(sw[keep], dtype=np.float64), rtol=1e-6)
np.testing.assert_allclose(total, want.numpy(), rtol=1e-5)
np.testing.assert_allclose(np.sum(grads, axis=0), gw, rtol=1e-4, atol=1e-6)
assert abs(naive_total - want.numpy()) > 1e-3  # compute_average_loss divides by B
print("OK", strategy.num_replicas_in_sync)
