"""Backends, argument checks and reductions: the layer every loss stands on (imports nothing above it)."""
