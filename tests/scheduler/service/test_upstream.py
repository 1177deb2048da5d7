"""The PD request pair (rank pinning as SGLang 0.5.23 honours it) and the load parsers."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sbs.scheduler.core.types import RankLoad
from sbs.scheduler.service import upstream


@given(seed=st.integers(0, 2**32), dp=st.integers(1, 512), data=st.data())
def test_room_is_a_63_bit_integer_congruent_to_the_pinned_prefill_rank(
    seed: int, dp: int, data: st.DataObject
) -> None:
    rank = data.draw(st.integers(0, dp - 1))
    room = upstream.choose_room(random.Random(seed), dp, rank)
    assert 0 <= room <= upstream.MAX_ROOM
    assert room % dp == rank


def test_unpinned_room_is_random() -> None:
    rng = random.Random(1)
    rooms = {upstream.choose_room(rng, 8, None) for _ in range(50)}
    assert len(rooms) == 50 and {r % 8 for r in rooms} != {0}


def test_pd_bodies_pin_both_ranks_and_replace_client_pd_fields() -> None:
    body = {"text": "hi", "stream": True, "routed_dp_rank": 5, "bootstrap_room": 1, "rid": "client"}
    p, d = upstream.pd_bodies(
        body, rid="r1", bootstrap_host="10.0.0.1", bootstrap_port=8998, room=19, prefill_rank=3, decode_rank=6
    )
    common = {"text": "hi", "stream": True, "rid": "r1", "bootstrap_host": "10.0.0.1", "bootstrap_port": 8998}
    assert p == {**common, "bootstrap_room": 19, "routed_dp_rank": 3, "disagg_prefill_dp_rank": 3}
    assert d == {**common, "bootstrap_room": 19, "routed_dp_rank": 6, "disagg_prefill_dp_rank": 3}
    assert body["routed_dp_rank"] == 5  # the client's body is not modified


def test_pd_bodies_without_ranks_leave_the_choice_to_the_engines() -> None:
    p, d = upstream.pd_bodies(
        {"text": "hi"},
        rid="r",
        bootstrap_host="h",
        bootstrap_port=None,
        room=7,
        prefill_rank=None,
        decode_rank=None,
    )
    assert p == d == {"text": "hi", "rid": "r", "bootstrap_host": "h", "bootstrap_room": 7}


PD = {"rid": "r1", "bootstrap_host": '10.0.0."1', "bootstrap_port": 7, "room": 2**62 + 3}


@pytest.mark.parametrize(
    "raw",
    [
        rb'{"text": "h\u00e9llo", "sampling_params": {"max_new_tokens": 4}}',
        '{\n  "text": "héllo",\n  "input_ids": [1, 2]\n}\n '.encode(),  # as sent, not re-encoded
        b"{ }",
        b'{"text": "a", "bootstrap_room": 5, "rid": "client"}',  # PD fields: re-serialised without them
    ],
)
@pytest.mark.parametrize(
    "ranks",
    [{"prefill_rank": None, "decode_rank": None}, {"prefill_rank": 1, "decode_rank": 3, "priority": -2}],
)
def test_pd_payloads_are_the_pd_bodies_whether_the_client_json_is_passed_on_or_not(
    raw: bytes, ranks: dict[str, int]
) -> None:
    doc = json.loads(raw)
    prefix = upstream.engine_prefix(doc, raw=raw)
    assert prefix.startswith(raw.rstrip()[:-1]) == upstream.PD_FIELDS.isdisjoint(doc)
    p, d = upstream.pd_payloads(prefix, **PD, **ranks)
    assert (json.loads(p), json.loads(d)) == upstream.pd_bodies(doc, **PD, **ranks)


def test_pd_fields_json_is_what_json_dumps_writes() -> None:
    fields = {"rid": 'x"y\u00e9', "bootstrap_port": 5, "room": -1, "other": [True, None]}
    assert upstream._fields_json(fields) == json.dumps(fields).encode()[1:]


def test_parse_loads_reads_per_rank_core_fields_and_the_oldest_timestamp() -> None:
    doc = {
        "timestamp": 100.0,
        "loads": [
            {
                "dp_rank": 0,
                "timestamp": 99.5,
                "num_running_reqs": 2,
                "num_waiting_reqs": 1,
                "num_waiting_uncached_tokens": 300,
                "num_used_tokens": 900,
                "max_total_num_tokens": 5000,
            },
            {"dp_rank": 1, "timestamp": 99.0},
        ],
    }
    reply = upstream.parse_loads(doc)
    assert reply.engine_ts == 99.0
    assert reply.loads == (RankLoad(0, 2, 1, 300, 900, 5000), RankLoad(1, 0, 0, 0, 0, 0))


@pytest.mark.parametrize(
    "doc", [{"load": 3}, {"loads": [{"num_running_reqs": 1}]}, []], ids=["old", "no_rank", "list"]
)
def test_parse_loads_refuses_other_shapes(doc: object) -> None:
    with pytest.raises(ValueError, match="expected"):
        upstream.parse_loads(doc)


def test_metrics_fallback_reads_sglang_gauges_per_dp_rank() -> None:
    text = (
        "# TYPE sglang:num_running_reqs gauge\n"
        'sglang:num_running_reqs{dp_rank="0",engine_type="decode"} 3.0\n'
        'sglang:num_running_reqs{dp_rank="1",engine_type="decode"} 1.0\n'
        "# TYPE sglang:num_queue_reqs gauge\n"
        'sglang:num_queue_reqs{dp_rank="1"} 4.0\n'
        "# TYPE sglang_num_used_tokens gauge\n"
        'sglang_num_used_tokens{dp_rank="0"} 700.0\n'
        "# TYPE sglang:max_total_num_tokens gauge\n"
        'sglang:max_total_num_tokens{dp_rank="0"} 9000.0\n'
        'sglang:max_total_num_tokens{dp_rank="1"} 9000.0\n'
    )
    assert upstream.parse_metrics_loads(text) == (
        RankLoad(0, 3, 0, 0, 700, 9000),
        RankLoad(1, 1, 4, 0, 0, 9000),
    )


def test_engine_errors_say_whose_fault() -> None:
    assert upstream.UpstreamError("p", "refused").engine_failed
    assert upstream.UpstreamError("p", "boom", status=500).engine_failed
    assert not upstream.UpstreamError("p", "bad body", status=400).engine_failed


def test_prefill_stamps_come_from_the_answers_meta_info() -> None:
    body = (
        b'{"text":"a","meta_info":{"id":"x","forward_entry_time":1765000000.25,'
        b'"prefill_finished_time":1765000000.5}}'
    )
    assert upstream.prefill_stamps(body) == (1765000000.25, 1765000000.5, -1.0)  # no queue_time
    stream = (
        b'data: {"text":"a","meta_info":{"forward_entry_time": 10.0,"prefill_finished_time": 11.0}}\n\n'
        b'data: {"text":"a","meta_info":{"forward_entry_time": 10.0,"prefill_finished_time": 12.5,'
        b'"queue_time": 0.25}}\n\n'
        b"data: [DONE]\n\n"
    )
    assert upstream.prefill_stamps(stream) == (10.0, 12.5, 0.25)  # a stream's last values


@pytest.mark.parametrize(
    "body",
    [
        b'{"meta_info":{"id":"x"}}',  # metrics off: no time stats
        b'{"meta_info":{"forward_entry_time":5.0}}',
        b'{"meta_info":{"forward_entry_time":5.0,"prefill_finished_time":4.0}}',  # ends before it starts
        b'{"meta_info":{"forward_entry_time":5.0.1,"prefill_finished_time":6.0}}',
    ],
)
def test_prefill_stamps_are_none_unless_both_make_sense(body: bytes) -> None:
    assert upstream.prefill_stamps(body) is None
