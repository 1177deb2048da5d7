"""Scheduling policies: SBS and the immediate-dispatch baselines, one per module."""
