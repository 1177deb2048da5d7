"""Server-side apply that writes only what changed: every applied object carries the hash of its own
content (`sbs.dev/spec-hash`), and is applied again only when the desired object's hash differs from
the one recorded on the live object. A converged reconcile therefore writes nothing."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sbs.kube.labels import SPEC_HASH


def short_hash(obj: Any, length: int = 10) -> str:
    """A stable hex digest of a JSON-able value."""
    data = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(data).hexdigest()[:length]


def with_spec_hash(obj: dict[str, Any]) -> dict[str, Any]:
    """`obj` annotated with the hash of its own content."""
    meta = obj["metadata"]
    annotations = {**meta.get("annotations", {}), SPEC_HASH: short_hash(obj)}
    return {**obj, "metadata": {**meta, "annotations": annotations}}


def needs_apply(desired: dict[str, Any], live: dict[str, Any] | None) -> bool:
    """Whether `desired` (from `with_spec_hash`) differs from what was last applied to `live`."""
    recorded = (((live or {}).get("metadata") or {}).get("annotations") or {}).get(SPEC_HASH)
    return recorded != desired["metadata"]["annotations"][SPEC_HASH]
