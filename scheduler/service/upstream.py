"""HTTP calls to the engines: the PD request pair, load polls and shape discovery.

The PD pair follows SGLang 0.5.23 (`disaggregation/common/conn.py`, `decode.py`; design notes §0, §1.6):
both sides get the same body with the same `bootstrap_host`/`bootstrap_port`/`bootstrap_room`;
- the room is chosen ≡ the prefill rank (mod the prefill's DP size), so a prefill that follows the
  room (0.5.23's default for PD prefill) puts the request on that rank, and no "follow_bootstrap_room
  conflict" can arise;
- the prefill request also carries `routed_dp_rank` = `disagg_prefill_dp_rank` = the prefill rank
  (the latter skips the prefill's room/rank check and registration);
- the decode request carries `routed_dp_rank` = the decode rank and `disagg_prefill_dp_rank` = the
  prefill rank (where to pull the KV from; no bootstrap-server query).
An unpinned side (the `sglang` baseline) gets none of the rank fields and a random room.
With a `+prio` policy both sides also get the dispatch's `priority` (the engines run
`--enable-priority-scheduling`), replacing the client's.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from sbs.scheduler.core.types import RankLoad
from sbs.scheduler.service.engine_http import EngineClient, EngineResponse

log = logging.getLogger(__name__)

MAX_ROOM = (1 << 63) - 1
PD_FIELDS = frozenset(
    {
        "bootstrap_host",
        "bootstrap_port",
        "bootstrap_room",
        "routed_dp_rank",
        "data_parallel_rank",
        "disagg_prefill_dp_rank",
        "rid",
    }
)
"""Fields the service owns: a client's values for them are replaced."""


def choose_room(rng: random.Random, dp_size: int, rank: int | None) -> int:
    """A random 63-bit bootstrap room, ≡ `rank` (mod `dp_size`) when the prefill rank is pinned."""
    room = rng.getrandbits(63)
    if rank is None or dp_size <= 1:
        return room
    room += rank - room % dp_size
    return room - dp_size if room > MAX_ROOM else room


def _pd_fields(
    *,
    rid: str,
    bootstrap_host: str,
    bootstrap_port: int | None,
    room: int,
    prefill_rank: int | None,
    decode_rank: int | None,
    priority: int | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The PD fields of the (prefill, decode) bodies of one dispatch (and its SGLang priority)."""
    base: dict[str, Any] = {"rid": rid, "bootstrap_host": bootstrap_host}
    if bootstrap_port is not None:
        base["bootstrap_port"] = bootstrap_port
    base["bootstrap_room"] = room
    if priority is not None:
        base["priority"] = priority
    prefill, decode = dict(base), base
    if prefill_rank is not None:
        prefill["routed_dp_rank"] = prefill_rank
        prefill["disagg_prefill_dp_rank"] = prefill_rank
        decode["disagg_prefill_dp_rank"] = prefill_rank
    if decode_rank is not None:
        decode["routed_dp_rank"] = decode_rank
    return prefill, decode


def pd_bodies(body: Mapping[str, Any], **pd: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The (prefill, decode) bodies of one PD dispatch: the client's body plus the PD fields (the
    keyword arguments of `_pd_fields`)."""
    owned = PD_FIELDS | {"priority"} if pd.get("priority") is not None else PD_FIELDS
    base = {k: v for k, v in body.items() if k not in owned}
    prefill, decode = _pd_fields(**pd)
    return base | prefill, base | decode


def engine_prefix(body: Mapping[str, Any], *, own_priority: bool = False, raw: bytes | None = None) -> bytes:
    """The client's body as JSON without the PD fields (and without `priority` when the service sends
    its own) and without its closing brace: serialised once (it may be large) and completed per side
    by `pd_payloads`. `raw`: the JSON text `body` was read from (checked valid), passed on as it is
    when it holds none of those fields (nothing to drop: no second serialisation)."""
    owned = PD_FIELDS | {"priority"} if own_priority else PD_FIELDS
    if raw is not None and owned.isdisjoint(body):
        text = raw.rstrip()
        if text.endswith(b"}"):
            return text[:-1]
    return json.dumps({k: v for k, v in body.items() if k not in owned}).encode()[:-1]


_encode_str = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]
"""What `json.dumps` writes for a string (C)."""


def _fields_json(fields: Mapping[str, Any]) -> bytes:
    """`json.dumps(fields).encode()[1:]` for our PD fields, without the encoder's per-call setup."""
    parts = []
    for k, v in fields.items():
        if type(v) is int:
            parts.append(f'"{k}": {v}')
        elif type(v) is str:
            parts.append(f'"{k}": {_encode_str(v)}')
        else:
            parts.append(f'"{k}": {json.dumps(v)}')
    return (", ".join(parts) + "}").encode()


def pd_payloads(prefix: bytes, **pd: Any) -> tuple[bytes, bytes]:
    """`pd_bodies` as JSON bytes, from an `engine_prefix`."""
    sep = b"" if prefix.rstrip().endswith(b"{") else b","
    prefill, decode = _pd_fields(**pd)
    return prefix + sep + _fields_json(prefill), prefix + sep + _fields_json(decode)


class UpstreamError(Exception):
    """An engine call failed. `status` is None for a connection failure (refused, reset, timed out);
    `engine_failed` says whether the engine (not the request) is to blame."""

    def __init__(
        self,
        engine: str,
        message: str,
        *,
        status: int | None = None,
        body: bytes = b"",
        content_type: str = "",
    ) -> None:
        super().__init__(f"engine {engine}: {message}")
        self.engine = engine
        self.status = status
        self.body = body
        self.content_type = content_type

    @property
    def engine_failed(self) -> bool:
        """The engine is to blame: no answer, a 5xx, or a 401/403 (our API key, not the client's)."""
        return self.status is None or self.status >= 500 or self.status in (401, 403)


def _connection_error(engine: str, exc: BaseException) -> UpstreamError:
    return UpstreamError(engine, f"{type(exc).__name__}: {exc}".rstrip(": "))


async def call_prefill(
    client: EngineClient, url: str, body: bytes, engine: str
) -> tuple[float, float, float] | None:
    """POST the prefill side and read its whole answer (it ends when the prefill is done); returns the
    answer's step stamps (`prefill_stamps`)."""
    try:
        resp = await client.post(url, body)
        try:
            data = await resp.read()
        finally:
            resp.close()
    except (TimeoutError, OSError) as exc:
        raise _connection_error(engine, exc) from None
    if resp.status != 200:
        raise _refused(engine, "prefill", resp, data)
    err = stream_error(data) if resp.content_type == "text/event-stream" else None
    if err is not None:
        raise UpstreamError(
            engine,
            f"prefill stream reported an error: {err.get('message')}",
            status=error_status(err),
            body=data,
            content_type=resp.content_type,
        )
    return prefill_stamps(data)


_STAMP = re.compile(rb'"(forward_entry_time|prefill_finished_time|queue_time)":\s*([0-9][0-9.eE+-]*)')


def prefill_stamps(data: bytes) -> tuple[float, float, float] | None:
    """`(forward_entry_time, prefill_finished_time, queue_time)` from a prefill answer's `meta_info`
    (SGLang adds its scheduler's time stats with `--enable-metrics`; a stream's last values count):
    the step that began the prompt and the one that finished it, Unix seconds, and the time it waited
    schedulable before it began (-1 when absent). None without both stamps."""
    found = dict(_STAMP.findall(data))
    try:
        entry, finished = float(found[b"forward_entry_time"]), float(found[b"prefill_finished_time"])
        queued = float(found.get(b"queue_time", b"-1"))
    except (KeyError, ValueError):
        return None
    return (entry, finished, queued) if 0 < entry <= finished else None


def stream_error(data: bytes) -> dict[str, Any] | None:
    """The first SSE `error` event in `data` (SGLang ends a failed stream with one), if any."""
    at = data.find(b'data: {"error"')
    if at < 0:
        return None
    end = data.find(b"\n", at)
    try:
        doc = json.loads(data[at + 6 : end if end >= 0 else len(data)])
    except ValueError:
        return {"message": "malformed error event"}
    err = doc.get("error") if isinstance(doc, dict) else None
    return err if isinstance(err, dict) else {"message": str(err)}


def error_status(err: dict[str, Any]) -> int:
    """The HTTP status an SSE error event stands for (its integer `code`; 500 when it has none)."""
    code = err.get("code")
    return code if isinstance(code, int) and 400 <= code <= 599 else 500


async def open_decode(client: EngineClient, url: str, body: bytes, engine: str) -> EngineResponse:
    """POST the decode side and return the open answer (status 200); the caller closes it."""
    try:
        resp = await client.post(url, body)
    except (TimeoutError, OSError) as exc:
        raise _connection_error(engine, exc) from None
    if resp.status != 200:
        try:
            data = await resp.read()
        except (TimeoutError, OSError):
            data = b""
        finally:
            resp.close()
        raise _refused(engine, "decode", resp, data)
    return resp


def _refused(engine: str, side: str, resp: EngineResponse, data: bytes) -> UpstreamError:
    """A side's answer other than 200, relayed with its status, body and content type."""
    status, ctype = resp.status, resp.content_type
    return UpstreamError(engine, f"{side} answered {status}", status=status, body=data, content_type=ctype)


# ---------------------------------------------------------------------------------------------
# Polling


class LoadsUnavailable(Exception):
    """The engine has no `/v1/loads` (404): fall back to `/metrics`."""


@dataclass(frozen=True, slots=True)
class LoadsReply:
    loads: tuple[RankLoad, ...]
    engine_ts: float | None
    """The engine's wall-clock time of the oldest rank snapshot, when it says."""


_MAX_COUNTER = 2**53
"""Largest per-rank counter believed (anything above is a broken reply, not a load)."""


def parse_loads(doc: Any) -> LoadsReply:
    """`GET /v1/loads` JSON → per-rank loads (missing counters read as 0). Raises ValueError for
    anything else, naming what is wrong."""
    if not isinstance(doc, dict) or not isinstance(doc.get("loads"), list):
        raise ValueError("expected an object with a 'loads' list")
    out = []
    stamps = []
    for entry in doc["loads"]:
        if not isinstance(entry, dict) or type(entry.get("dp_rank")) is not int:
            raise ValueError(f"expected per-rank entries with an integer 'dp_rank', got {entry!r:.200}")
        out.append(
            RankLoad(
                dp_rank=entry["dp_rank"],
                num_running_reqs=_counter(entry, "num_running_reqs"),
                num_waiting_reqs=_counter(entry, "num_waiting_reqs"),
                num_waiting_uncached_tokens=_counter(entry, "num_waiting_uncached_tokens"),
                num_used_tokens=_counter(entry, "num_used_tokens"),
                max_total_num_tokens=_counter(entry, "max_total_num_tokens"),
            )
        )
        ts = _timestamp(entry.get("timestamp"))
        if ts is not None:
            stamps.append(ts)
    if not stamps and (ts := _timestamp(doc.get("timestamp"))) is not None:
        stamps.append(ts)
    return LoadsReply(tuple(out), min(stamps) if stamps else None)


def _counter(entry: dict[str, Any], key: str) -> int:
    value = entry.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= _MAX_COUNTER:
        raise ValueError(f"rank {entry['dp_rank']}: '{key}' must be a non-negative number, got {value!r:.80}")
    return int(value)


def _timestamp(value: Any) -> float | None:
    """Unix seconds from a number or an ISO 8601 string (SGLang has used both); None otherwise."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) if abs(value) < 1e12 else None
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value)
            return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
        except (ValueError, OverflowError):
            return None
    return None


_METRIC_FIELDS = {
    "num_running_reqs": "num_running_reqs",
    "num_queue_reqs": "num_waiting_reqs",
    "num_used_tokens": "num_used_tokens",
    "max_total_num_tokens": "max_total_num_tokens",
}


def parse_metrics_loads(text: str) -> tuple[RankLoad, ...]:
    """Per-rank loads from SGLang's Prometheus gauges (`sglang:` or `sglang_` names, `dp_rank` label).
    Waiting uncached tokens are not exported there and read as 0."""
    ranks: dict[int, dict[str, int]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name.removeprefix("sglang:").removeprefix("sglang_")
            field = _METRIC_FIELDS.get(name)
            if field is None:
                continue
            rank = int(sample.labels.get("dp_rank", "0"))
            if not 0 <= sample.value <= _MAX_COUNTER:  # also NaN
                raise ValueError(f"{sample.name} must be a non-negative number, got {sample.value}")
            ranks.setdefault(rank, {})[field] = int(sample.value)
    return tuple(
        RankLoad(
            dp_rank=r,
            num_running_reqs=f.get("num_running_reqs", 0),
            num_waiting_reqs=f.get("num_waiting_reqs", 0),
            num_waiting_uncached_tokens=0,
            num_used_tokens=f.get("num_used_tokens", 0),
            max_total_num_tokens=f.get("max_total_num_tokens", 0),
        )
        for r, f in sorted(ranks.items())
    )


async def fetch_loads(session: aiohttp.ClientSession, url: str, engine: str) -> LoadsReply:
    """One `GET /v1/loads?include=core`. Raises `LoadsUnavailable` on 404, `UpstreamError` otherwise."""
    try:
        async with session.get(f"{url}/v1/loads", params={"include": "core"}) as resp:
            if resp.status == 404:
                raise LoadsUnavailable(engine)
            if resp.status != 200:
                raise UpstreamError(engine, f"/v1/loads answered {resp.status}", status=resp.status)
            data = await resp.read()
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise _connection_error(engine, exc) from None
    try:
        return parse_loads(json.loads(data))
    except (ValueError, RecursionError) as exc:  # RecursionError: a reply nested absurdly deep
        raise UpstreamError(engine, f"/v1/loads: malformed reply: {exc}", status=502) from None


async def fetch_metrics_loads(session: aiohttp.ClientSession, url: str, engine: str) -> LoadsReply:
    """Per-rank loads scraped from `/metrics` (engines without `/v1/loads`)."""
    try:
        async with session.get(f"{url}/metrics") as resp:
            if resp.status != 200:
                raise UpstreamError(engine, f"/metrics answered {resp.status}", status=resp.status)
            data = await resp.read()
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise _connection_error(engine, exc) from None
    try:
        return LoadsReply(parse_metrics_loads(data.decode()), None)
    except ValueError as exc:  # UnicodeDecodeError included
        raise UpstreamError(engine, f"/metrics: malformed reply: {exc}", status=502) from None


async def fetch_server_info(session: aiohttp.ClientSession, url: str, engine: str) -> dict[str, Any]:
    """`GET /server_info` (or the deprecated `/get_server_info`)."""
    last: UpstreamError | None = None
    for path in ("/server_info", "/get_server_info"):
        try:
            async with session.get(f"{url}{path}") as resp:
                status, data = resp.status, await resp.read()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise _connection_error(engine, exc) from None
        if status != 200:
            last = UpstreamError(engine, f"{path} answered {status}", status=status)
            continue
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError):
            doc = None
        if isinstance(doc, dict):
            return doc
        last = UpstreamError(engine, f"{path}: expected a JSON object", status=502)
    assert last is not None
    raise last
