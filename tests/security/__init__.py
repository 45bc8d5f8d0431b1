"""Attack suite: what a signed-in teammate, another team or a stranger can try (issue 12)."""
