"""The decision table, the guide renderer and the bundled example data (imports only ``xent._core``)."""
