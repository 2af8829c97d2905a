"""``xent.value_checks``: whether checks on *values* raise, run on the device, or are skipped.

Shape and dtype checks always run (they read metadata only). Checks on values
(label ranges, negative weights, probabilities in [0, 1]) need the values, and
reading a device array's values on the host stalls the device. The mode says
what to do:

* ``"raise"``: read the values and raise a ``ValueError`` naming the first
  offending position;
* ``"async"``: never copy a value to the host. torch queues a device-side
  assertion (``torch._assert_async``: the error surfaces at the next
  synchronisation), TensorFlow an in-graph assertion, JAX skips the check;
* ``"off"``: skip the checks.

Default (no mode set): ``"raise"`` for arrays in host memory (NumPy, torch and
JAX CPU arrays), ``"async"`` for arrays on an accelerator. While tracing
(``jax.jit`` / ``jax.vmap``, ``torch.compile``, ``tf.function``) ``"raise"``
becomes the in-graph kind: ``"async"`` for torch and TensorFlow, skipped for
JAX; so a traced function never breaks its graph for a check. Under
``tf.function(jit_compile=True)`` XLA drops TensorFlow's assertions: there the
checks do not run (validate eagerly or in a plain ``tf.function``).
"""

from __future__ import annotations

from typing import Any

MODES = ("raise", "async", "off")

# None: the per-array default described in the module docstring.
_MODE: str | None = None


class value_checks:
    """Set how value checks run: ``"raise"``, ``"async"`` or ``"off"``.

    Calling it sets the mode for the whole process; used as a context manager
    it also restores the previous mode (the default included) on exit.
    ``value_checks(None)`` goes back to the default: ``"raise"`` for arrays in
    host memory, ``"async"`` for arrays on an accelerator.

    * ``"raise"``: read the values and raise ``ValueError`` naming the first
      bad position (one host read per check);
    * ``"async"``: never read a value on the host: torch queues
      ``torch._assert_async`` (a ``RuntimeError`` at the next device
      synchronisation; on the CPU at once), TensorFlow an in-graph assertion,
      JAX skips the check;
    * ``"off"``: no value checks.

    Under tracing (``jax.jit``, ``torch.compile``, ``tf.function``) checks are
    in-graph (torch, TensorFlow) or skipped (JAX): never a graph break. XLA
    (``tf.function(jit_compile=True)``) drops the TensorFlow assertions.

    Example:
      >>> import numpy as np, xent
      >>> with xent.value_checks("off"):
      ...     print(xent.value_checks.current())
      off
      >>> xent.value_checks.current() is None   # back to the default
      True
      >>> xent.sigmoid_cross_entropy(np.zeros(2), np.array([0.0, 2.0]))
      Traceback (most recent call last):
      ...
      ValueError: labels must be in [0, 1], got 2 at position (1,); sigmoid labels are probabilities of the positive class
    """

    def __init__(self, mode: str | None) -> None:
        global _MODE
        if mode is not None and mode not in MODES:
            raise ValueError(
                f"value_checks mode must be one of {', '.join(repr(m) for m in MODES)} or None, "
                f"got {mode!r}")
        self._previous = _MODE
        self.mode = mode
        _MODE = mode

    def __enter__(self) -> "value_checks":
        return self

    def __exit__(self, *exc: Any) -> None:
        global _MODE
        _MODE = self._previous

    def __repr__(self) -> str:
        return f"value_checks({self.mode!r})"

    @staticmethod
    def current() -> str | None:
        """The mode set by the user, or None for the per-array default."""
        return _MODE


def mode_for(be: Any, x: Any) -> str:
    """The effective mode for a check on ``x`` (of backend ``be``): "raise", "async" or "off".

    Never reads a value. Under tracing "raise" becomes "async"; what "async"
    means is the backend's (``Backend.async_mode``): a device-side or
    in-graph assertion (torch, TensorFlow), "raise" where there is no device
    (NumPy), "off" where nothing can assert (JAX, ``torch.func`` transforms).
    """
    mode = _MODE
    if mode == "off":
        return "off"
    if mode is None:
        mode = "raise" if be.on_host(x) else "async"
    tracing = be.tracing(x)
    if mode == "raise" and tracing:
        mode = "async"
    return be.async_mode(tracing) if mode == "async" else mode


def assert_async(be: Any, ok: Any, message: str) -> None:
    """Queue a device-side assertion that the boolean scalar ``ok`` holds (where the backend can)."""
    be.assert_async(ok, message)
