"""A local SMS-compatible control plane for development, tests and the demo."""
