"""Sans-IO Staggered Batch Scheduling core: pure, deterministic, time passed in."""
