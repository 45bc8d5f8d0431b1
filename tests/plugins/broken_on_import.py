"""A tenant plugin that fails while being imported (startup must name it)."""

raise RuntimeError("acme license server unreachable")
