"""Per-library kernels and the table that picks them (imports only ``xent._core`` and each other downward)."""
