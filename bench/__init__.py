"""Benchmarks that print figures (run as `python -m sbs.bench.<name>`)."""
