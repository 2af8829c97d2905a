"""Run in a subprocess: MirroredStrategy on 4 logical CPUs; per-replica losses over the global
count sum to the global mean (value and gradients). Prints OK."""
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 4)
import xent  # noqa: E402

rng = np.random.default_rng(0)
B, C = 16, 5
z = rng.normal(size=(B, C)).astype("float32")
t = rng.integers(0, C, B)
t[3] = t[9] = -100
sw = rng.random(B).astype("float32")
strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(4)])
with strategy.scope():
    w = tf.Variable(np.eye(C, dtype="float32"))
n_global = float(np.sum(sw[t != -100]))  # sum_i n_i over the global batch


def replica_step(zb, tb, swb):
    with tf.GradientTape() as tape:
        per = xent.sparse_softmax_cross_entropy(zb @ w, tb, ignore_index=-100,
                                                sample_weight=swb, reduction="sum")
        loss = per / n_global  # == normalizer=n_global
    return loss, tape.gradient(loss, w)


ds = tf.data.Dataset.from_tensor_slices((z, t, sw)).batch(B)
dist = strategy.experimental_distribute_dataset(ds)
for zb, tb, swb in dist:
    loss, g = strategy.run(tf.function(replica_step), args=(zb, tb, swb))
    total = strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)
with tf.GradientTape() as tape:
    want = xent.sparse_softmax_cross_entropy(tf.constant(z) @ w, t, ignore_index=-100,
                                             sample_weight=sw)
gw = tape.gradient(want, w)
np.testing.assert_allclose(total.numpy(), want.numpy(), rtol=1e-5)
gsum = sum(v.numpy() for v in strategy.experimental_local_results(g)) if not hasattr(
    g, "numpy") else g.numpy()
np.testing.assert_allclose(gsum, gw.numpy(), rtol=1e-4, atol=1e-6)
print("OK", strategy.num_replicas_in_sync)
