"""Engine models: lockstep chunked prefill with radix caches, and per-rank decode batches."""

from __future__ import annotations

import random

import pytest
from sbs.scheduler.core.types import InstanceSpec, RankLoad, Role
from sbs.sim.costmodel import CostModel
from sbs.sim.engine import DecodeEngine, DecodeJob, PrefillEngine, PrefillJob

COST = CostModel()
CHUNK = 1000
BLOCK = 16


def prefill_engine(
    *, ranks: int = 4, balance: str = "round_robin", prefix_cache: bool = True
) -> PrefillEngine:
    spec = InstanceSpec("p", Role.PREFILL, ranks, CHUNK, 100_000)
    return PrefillEngine(spec, COST, balance=balance, block_tokens=BLOCK, prefix_cache=prefix_cache)


def job(rid: int, tokens: int, hashes: tuple[int, ...] = ()) -> PrefillJob:
    return PrefillJob(rid, tokens, hashes)


def run_step(eng: PrefillEngine, now: float = 0.0):
    duration = eng.start_step(now)
    assert duration > 0
    rec = eng.finish_step()
    return duration, rec


def drain(eng: PrefillEngine) -> list:
    steps = []
    while eng.has_work():
        steps.append(run_step(eng)[1])
    return steps


# -- prefill ---------------------------------------------------------------------------------------


def test_idle_engine_has_no_step() -> None:
    eng = prefill_engine()
    assert eng.start_step(0.0) == 0.0
    assert not eng.busy()


def test_step_lasts_as_long_as_the_slowest_rank() -> None:
    mixed = prefill_engine()
    mixed.submit(job(0, 100), 0)
    mixed.submit(job(1, 900), 1)
    alone = prefill_engine()
    alone.submit(job(1, 900), 1)
    d_mixed, rec = run_step(mixed)
    d_alone, _ = run_step(alone)
    assert d_mixed == pytest.approx(d_alone)
    assert d_mixed == COST.prefill_step_s([100, 900, 0, 0], [100.0**2, 900.0**2, 0, 0], ep_size=4)
    assert rec.rank_tokens == [100, 900, 0, 0]


def test_long_prompt_is_chunked_across_steps() -> None:
    eng = prefill_engine()
    eng.submit(job(0, 2500), 0)
    steps = drain(eng)
    assert [s.rank_tokens[0] for s in steps] == [1000, 1000, 500]
    assert [[j.rid for j in s.finished] for s in steps] == [[], [], [0]]
    assert steps[1].duration_s > steps[0].duration_s  # the second chunk attends to the first


def test_rank_budget_is_one_chunk_per_step() -> None:
    eng = prefill_engine()
    for rid in range(3):
        eng.submit(job(rid, 600), 2)
    steps = drain(eng)
    assert [s.rank_tokens[2] for s in steps] == [1000, 800]
    assert [[j.rid for j in s.finished] for s in steps] == [[0], [1, 2]]


def test_request_arriving_mid_step_waits_for_next_step() -> None:
    eng = prefill_engine()
    eng.submit(job(0, 100), 0)
    eng.start_step(0.0)
    eng.submit(job(1, 100), 0)
    rec = eng.finish_step()
    assert [j.rid for j in rec.finished] == [0]
    assert eng.has_work()


def test_radix_cache_hit_reduces_computed_tokens() -> None:
    eng = prefill_engine()
    hashes = (1, 2, 3, 4)
    eng.submit(job(0, 4 * BLOCK, hashes), 0)
    _, first = run_step(eng)
    eng.submit(job(1, 4 * BLOCK + 10, hashes), 0)
    _, second = run_step(eng)
    assert first.finished[0].cached == 0
    assert second.finished[0].cached == 4 * BLOCK
    assert second.rank_tokens[0] == 10


def test_fully_cached_prompt_still_computes_one_token() -> None:
    eng = prefill_engine()
    eng.submit(job(0, 2 * BLOCK, (1, 2)), 0)
    run_step(eng)
    eng.submit(job(1, 2 * BLOCK, (1, 2)), 0)
    _, rec = run_step(eng)
    assert rec.rank_tokens[0] == 1
    assert rec.finished[0].cached == 2 * BLOCK - 1


@pytest.mark.parametrize(("rank", "prefix_cache"), [(1, True), (0, False)], ids=["other_rank", "cache_off"])
def test_cache_is_per_rank_and_can_be_off(rank: int, prefix_cache: bool) -> None:
    eng = prefill_engine(prefix_cache=prefix_cache)
    eng.submit(job(0, 4 * BLOCK, (1, 2, 3, 4)), 0)
    run_step(eng)
    eng.submit(job(1, 4 * BLOCK, (1, 2, 3, 4)), rank)
    _, rec = run_step(eng)
    assert rec.finished[0].cached == 0


def test_round_robin_balance_cycles_ranks() -> None:
    eng = prefill_engine(balance="round_robin")
    assert [eng.submit(job(i, 10), None) for i in range(6)] == [0, 1, 2, 3, 0, 1]


def test_total_tokens_balance_picks_fewest_queued_tokens() -> None:
    eng = prefill_engine(balance="total_tokens")
    eng.submit(job(0, 500), 0)
    eng.submit(job(1, 100), 1)
    eng.submit(job(2, 300), 2)
    eng.submit(job(3, 200), 3)
    assert eng.submit(job(4, 50), None) == 1
    assert eng.submit(job(5, 50), None) == 1  # 150 < 200
    assert eng.submit(job(6, 50), None) == 1  # tie with rank 3 at 200: lowest index
    assert eng.submit(job(7, 50), None) == 3  # 200 < 250


def test_total_requests_balance_picks_shortest_queue() -> None:
    eng = prefill_engine(balance="total_requests")
    eng.submit(job(0, 10), 0)
    eng.submit(job(1, 10), 0)
    eng.submit(job(2, 10), 1)
    assert [eng.submit(job(i, 10), None) for i in (3, 4, 5)] == [2, 3, 1]


def test_bootstrap_room_balance_is_seeded() -> None:
    def picks(seed: int) -> list[int]:
        spec = InstanceSpec("p", Role.PREFILL, 8, CHUNK, 100_000)
        eng = PrefillEngine(spec, COST, balance="follow_bootstrap_room", rng=random.Random(seed))
        return [eng.submit(job(i, 10), None) for i in range(20)]

    assert picks(1) == picks(1)
    assert len(set(picks(1))) > 1


def test_unknown_balance_method_is_refused() -> None:
    eng = prefill_engine(balance="shortest_job")
    with pytest.raises(ValueError, match="'shortest_job'"):
        eng.submit(job(0, 10), None)


def test_loads_has_one_entry_per_rank_in_v1_loads_shape() -> None:
    eng = prefill_engine()
    eng.submit(job(0, 2500), 0)
    eng.submit(job(1, 300), 0)
    eng.submit(job(2, 40), 3)
    run_step(eng)  # job 0 has 1500 left
    loads = eng.loads()
    assert [ld.dp_rank for ld in loads] == [0, 1, 2, 3]
    assert loads[0] == RankLoad(0, 0, 2, 1500 + 300, 0, 100_000)
    assert loads[1].num_waiting_reqs == 0
    assert loads[3].num_waiting_uncached_tokens == 0  # job 2 finished in the step


# -- decode ---------------------------------------------------------------------------------------


def decode_engine(*, ranks: int = 2, kv: int = 10_000, max_running: int = 0) -> DecodeEngine:
    return DecodeEngine(InstanceSpec("d", Role.DECODE, ranks, 0, kv, max_running), COST)


def deliver(eng: DecodeEngine, rid: int, rank: int, kv: int, steps: int) -> DecodeJob:
    eng.reserve(rank, kv)
    j = DecodeJob(rid, rank, kv, steps)
    eng.add(j)
    return j


def test_reserved_requests_show_in_loads_until_their_kv_arrives() -> None:
    eng = decode_engine()
    eng.reserve(1, 300)
    assert eng.loads()[1].num_waiting_reqs == 1
    assert eng.loads()[1].num_used_tokens == 300
    eng.add(DecodeJob(0, 1, 300, 5))
    assert eng.reserved == [0, 0]
    assert eng.reserved_kv == [0, 0]
    assert eng.loads()[1].num_used_tokens == 300  # now waiting, still counted


def test_max_running_caps_the_batch() -> None:
    eng = decode_engine(max_running=2)
    for rid in range(3):
        deliver(eng, rid, 0, 100, 5)
    eng.start_step(0.0)
    assert list(eng.batch) == [2, 0]
    assert eng.n_waiting == 1


def test_request_waits_when_kv_is_full() -> None:
    eng = decode_engine(kv=1000)
    deliver(eng, 0, 0, 600, 10)
    deliver(eng, 1, 0, 600, 10)
    rec = eng.start_step(0.0) and eng.running
    assert rec.first_token == [0]
    assert eng.n_waiting == 1


def test_oversized_request_joins_an_empty_rank() -> None:
    eng = decode_engine(kv=1000)
    deliver(eng, 0, 0, 1200, 3)
    eng.start_step(0.0)
    assert list(eng.batch) == [1, 0]


def test_first_token_comes_at_end_of_first_step_joined() -> None:
    eng = decode_engine()
    deliver(eng, 0, 0, 100, 5)
    eng.start_step(0.0)
    deliver(eng, 1, 1, 100, 5)  # arrives mid-step: joins the next one
    rec = eng.finish_step()
    assert rec.first_token == [0]
    eng.start_step(rec.duration_s)
    assert eng.finish_step().first_token == [1]


@pytest.mark.parametrize("output_tokens", [1, 2, 5, 17])
def test_job_finishes_after_output_minus_one_steps(output_tokens: int) -> None:
    eng = decode_engine()
    steps = max(1, output_tokens - 1)
    deliver(eng, 0, 0, 100, steps)
    t = 0.0
    finished_at = None
    for k in range(1, steps + 2):
        t += eng.start_step(t)
        if eng.finish_step().finished == [0]:
            finished_at = k
            break
    assert finished_at == steps
    assert not eng.has_work()


def test_kv_accounting_returns_to_zero() -> None:
    eng = decode_engine(ranks=3, kv=5000, max_running=2)
    rng = random.Random(3)
    for rid in range(20):
        deliver(eng, rid, rng.randrange(3), rng.randint(10, 2000), rng.randint(1, 8))
    t = 0.0
    seen = 0
    while eng.has_work():
        t += eng.start_step(t)
        rec = eng.finish_step()
        assert rec.max_rank_batch <= 2
        seen += len(rec.finished)
    assert seen == 20
    assert list(eng.kv) == [0, 0, 0]
    assert list(eng.batch) == [0, 0, 0]


def test_decode_step_duration_follows_the_cost_model() -> None:
    eng = decode_engine()
    deliver(eng, 0, 0, 100, 3)
    deliver(eng, 1, 1, 700, 3)
    duration = eng.start_step(0.0)
    assert duration == COST.decode_step_s(eng.batch, eng.kv, ep_size=2)
    assert eng.running.batch == 2
    assert eng.running.max_rank_batch == 1
