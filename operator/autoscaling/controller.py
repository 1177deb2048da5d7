"""The SBSAutoscalingPolicy controller (IO edge of `autoscale`): runs in the operator, leader only.

Every `syncPeriodSeconds` per policy: list the SBSDeployments its selector matches (any namespace),
scrape each one's scheduler metrics, decide both roles' group counts in one step, record the
decision in the policy's status, then write the roles' SBSRoleScalers (only roles owned
`External`; a `Static` role is reported and left alone). The operator's reconcile turns scaler
changes into engine groups. No error ends the loop (`supervision.forever`), a round runs under the
leader's `guard` (cancelled when the lease lapses), and `health` feeds the liveness probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from pydantic import ValidationError
from sbs.kube import labels, timestamps
from sbs.kube.client import ApiError, KubeClient, collection_path
from sbs.operator import api, scheduler_objects, supervision
from sbs.operator.autoscaling import decision, policy_api, role_scaler_api, role_scalers
from sbs.operator.leader import LeadershipLost

log = logging.getLogger("sbs.operator.autoscaler")
MAX_DECISIONS = 20
FORBIDDEN_RETRY_S = 60.0


def selected(policy: policy_api.AutoscalingPolicySpec, dep: dict[str, Any]) -> bool:
    labels = dep["metadata"].get("labels") or {}
    return all(labels.get(k) == v for k, v in policy.selector.match_labels.items())


def metrics_url(dep: api.SBSDeployment, annotation: str) -> str:
    override = (dep.metadata.get("annotations") or {}).get(annotation)
    return override or scheduler_objects.endpoint(dep) + "/metrics"


def gpus_per_group(dep: api.SBSDeployment) -> dict[str, int]:
    return {r: dep.spec.role(r).gpus_per_group for r in api.ROLES}


class Autoscaler:
    def __init__(
        self,
        client: KubeClient,
        is_leader: Callable[[], bool],
        *,
        tick_s: float = 1.0,
        guard: Callable[[Awaitable[None]], Awaitable[None]] | None = None,
        stale_after_s: float = 120.0,
    ) -> None:
        self.client, self.is_leader, self.tick_s, self.guard = client, is_leader, tick_s, guard
        self.health = supervision.Health("autoscaler", stale_after_s, needs_success=False)
        self.forbidden_until = 0.0
        """While the policies may not be listed (a namespaced Role), they are not asked for."""
        self.memory: dict[tuple[str, str, str], decision.Memory] = {}
        self.scrapes: dict[tuple[str, str], decision.Scrape] = {}
        self.next_due: dict[str, float] = {}
        self.plan_base: dict[tuple[str, str], decision.Scrape] = {}
        """Per deployment: the scrape the next prediction's window starts at."""
        self.floors: dict[tuple[str, str], tuple[int, int]] = {}
        self.http: aiohttp.ClientSession | None = None

    async def run(self) -> None:
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3))
        try:
            await supervision.forever(self.health, self.round, self.tick_s)
        finally:
            await self.http.close()

    async def round(self) -> None:
        """One tick, when leading; an error is the caller's to log (`supervision.forever`)."""
        if not self.is_leader():
            return
        work = self.tick(time.monotonic())
        try:
            await (self.guard(work) if self.guard else work)
        except LeadershipLost:
            log.info("autoscaler round cancelled: leadership lost")

    async def tick(self, mono: float) -> None:
        if mono < self.forbidden_until:
            return
        path = collection_path(api.API_VERSION, policy_api.PLURAL, None)
        try:
            policies = await self.client.list(path)
        except ApiError as exc:
            if exc.status != 403:
                raise
            if not self.forbidden_until:  # namespaced RBAC: the policies are cluster-scoped
                log.info(
                    "autoscaling policies off (asked again every %.0f s): %s", FORBIDDEN_RETRY_S, exc.message
                )
            self.forbidden_until = mono + FORBIDDEN_RETRY_S
            return
        self.forbidden_until = 0.0
        for policy in policies:
            name = policy["metadata"]["name"]
            if mono < self.next_due.get(name, 0.0):
                continue
            try:
                spec = policy_api.AutoscalingPolicySpec.model_validate(policy.get("spec") or {})
            except ValidationError as exc:
                log.warning("policy %s is invalid: %s", name, exc.errors()[0])
                continue
            self.next_due[name] = mono + spec.behaviour.sync_period_seconds
            await self.sync(policy, spec)

    async def _scrape(
        self, dep: api.SBSDeployment, spec: policy_api.AutoscalingPolicySpec
    ) -> decision.Scrape | None:
        assert self.http is not None
        url = metrics_url(dep, spec.signals.metrics_url_annotation)
        try:
            async with self.http.get(url) as resp:
                if resp.status != 200:
                    return None
                text = await resp.text()
        except (TimeoutError, aiohttp.ClientError, OSError):
            return None
        return decision.parse_metrics(text, time.monotonic())

    async def sync(self, policy: dict[str, Any], spec: policy_api.AutoscalingPolicySpec) -> None:
        name = policy["metadata"]["name"]
        now = time.time()  # noqa: TID251 (IO edge: decisions and their records carry wall-clock time)
        deps = await self.client.list(collection_path(api.API_VERSION, api.PLURAL, None))
        chosen: list[tuple[api.SBSDeployment, dict[str, dict[str, Any]]]] = []
        for raw in deps:
            if not selected(spec, raw) or raw["metadata"].get("deletionTimestamp"):
                continue
            try:
                dep = api.SBSDeployment.model_validate(raw)
            except ValidationError:
                continue
            path = collection_path(api.API_VERSION, role_scaler_api.PLURAL, dep.namespace)
            items = await self.client.list(path, label_selector=f"{labels.DEPLOYMENT}={dep.name}")
            chosen.append((dep, {i["spec"]["role"]: i for i in items}))

        def groups_of(dep: api.SBSDeployment, found: dict[str, dict[str, Any]]) -> dict[str, int]:
            return {r: role_scalers.desired_groups(dep, r, found.get(r)) for r in api.ROLES}

        total = sum(decision.gpus(groups_of(d, f), gpus_per_group(d)) for d, f in chosen)
        decisions: list[policy_api.Decision] = []
        for dep, found in chosen:
            external = [r for r in api.ROLES if dep.spec.role(r).groups_owner == "External" and r in found]
            if not external:
                continue
            scrape = await self._scrape(dep, spec)
            key = (dep.namespace, dep.name)
            previous = self.scrapes.get(key)
            if scrape is None:
                continue
            self.scrapes[key] = scrape
            if previous is None:
                continue  # a window needs two scrapes
            obs = decision.Observation.between(previous, scrape)
            groups = groups_of(dep, found)
            per = gpus_per_group(dep)
            memory = self.memory.setdefault((name, *key), decision.Memory())
            budget_left = None if spec.gpu_budget is None else spec.gpu_budget - total
            if spec.predictive.enabled:
                await self._predict(dep, spec, key, scrape, budget_left, decision.gpus(groups, per))
            out = decision.decide(
                groups["prefill"], groups["decode"], obs, spec, memory, now,
                gpus_per_group=(per["prefill"], per["decode"]), budget_left=budget_left,
                floor=self.floors.get(key),
            )  # fmt: skip
            target = {"prefill": out.prefill, "decode": out.decode}
            for r in api.ROLES:
                if r not in external:
                    target[r] = groups[r]  # a Static role is not ours to change
            if target == groups:
                continue
            total += decision.gpus(target, per) - decision.gpus(groups, per)
            record = policy_api.Decision(
                time=timestamps.rfc3339(now), namespace=dep.namespace, deployment=dep.name,
                prefill_from=groups["prefill"], prefill_to=target["prefill"],
                decode_from=groups["decode"], decode_to=target["decode"], reason=out.reason,
            )  # fmt: skip
            decisions.append(record)
            await self._record(policy, spec, decisions, len(chosen), total)  # the intent first
            for r in external:
                if target[r] != groups[r]:
                    path = collection_path(api.API_VERSION, role_scaler_api.PLURAL, dep.namespace)
                    await self.client.patch(
                        f"{path}/{found[r]['metadata']['name']}", {"spec": {"replicas": target[r]}}
                    )
            log.info("policy %s: %s: %s", name, record.model_dump_json(), out.reason)
        await self._record(policy, spec, decisions, len(chosen), total)

    async def _predict(
        self,
        dep: api.SBSDeployment,
        spec: policy_api.AutoscalingPolicySpec,
        key: tuple[str, str],
        scrape: decision.Scrape,
        budget_left: int | None,
        own_gpus: int,
    ) -> None:
        """Re-plan `dep` from the workload observed since the last plan, every `interval_seconds`."""
        from sbs.operator.autoscaling import prediction  # loads the simulator: only when used

        base = self.plan_base.setdefault(key, scrape)
        span = scrape.at - base.at
        requests = scrape.accepted - base.accepted
        if span < spec.predictive.interval_seconds or requests < spec.predictive.min_requests:
            return
        self.plan_base[key] = scrape
        max_gpus = None if budget_left is None else budget_left + own_gpus
        prompts = scrape.prompt_tokens.minus(base.prompt_tokens)
        outputs = scrape.output_tokens.minus(base.output_tokens)
        result = await asyncio.to_thread(
            prediction.predict, dep.spec, spec, requests / span, prompts, outputs, max_gpus
        )
        if result is not None and result.feasible:
            self.floors[key] = (int(result.prefill_groups), int(result.decode_groups))
            log.info(
                "predicted %s/%s needs %dP+%dD (TTFT p90 %.3f s)", *key, *self.floors[key], result.ttft_p90_s
            )
        else:
            self.floors.pop(key, None)

    async def _record(
        self,
        policy: dict[str, Any],
        spec: policy_api.AutoscalingPolicySpec,
        new: list[policy_api.Decision],
        selected_count: int,
        gpus_desired: int,
    ) -> None:
        """Write the policy's status when it changed (decisions appended, newest last)."""
        old = policy_api.AutoscalingPolicyStatus.model_validate(policy.get("status") or {})
        seen = {(d.time, d.namespace, d.deployment) for d in old.decisions}
        history = old.decisions + [d for d in new if (d.time, d.namespace, d.deployment) not in seen]
        history = history[-MAX_DECISIONS:]
        status = policy_api.AutoscalingPolicyStatus(
            observed_generation=int(policy["metadata"].get("generation", 0)),
            selected=selected_count,
            gpus_desired=gpus_desired,
            last_decision=history[-1] if history else None,
            decisions=history,
        ).model_dump(by_alias=True, mode="json", exclude_none=True)
        if (policy.get("status") or {}) != status:
            path = (
                collection_path(api.API_VERSION, policy_api.PLURAL, None) + f"/{policy['metadata']['name']}"
            )
            with contextlib.suppress(ApiError):
                updated = await self.client.patch(path + "/status", {"status": status})
                policy["status"] = updated.get("status", status)
