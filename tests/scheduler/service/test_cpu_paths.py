"""The per-request shortcuts taken for CPU (issue 14): request ids without `uuid.UUID`, the tuned
garbage collector."""

from __future__ import annotations

import gc
import os
import uuid

from sbs.scheduler.service import memory
from sbs.scheduler.service.dispatcher import uuid4_hex


def test_request_ids_are_uuid4_hex() -> None:
    for _ in range(2000):
        raw = os.urandom(16)
        assert uuid4_hex(raw) == uuid.UUID(bytes=raw, version=4).hex
    ids = {uuid4_hex() for _ in range(1000)}
    assert len(ids) == 1000 and all(uuid.UUID(i).version == 4 for i in ids)


def test_tune_gc_freezes_startup_objects_and_raises_the_young_threshold() -> None:
    before = gc.get_threshold()
    try:
        memory.tune_gc(12_345)
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (12_345, *before[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
