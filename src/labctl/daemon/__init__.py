"""The composition root for `labctl up`: wiring, signals and shutdown."""
