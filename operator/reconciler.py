"""One reconcile of one SBSDeployment: read, plan (pure), write only what differs, report status.

Children other than pods are server-side applied under the `sbs-operator` field manager, and only
when the hash of what we would apply differs from the one recorded on the object; pods are
created whole and deleted whole (per group). The status is patched only when it changed. So a
reconcile of a converged deployment makes no writes at all.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sbs.kube import labels, timestamps
from sbs.kube.apply import needs_apply, with_spec_hash
from sbs.kube.client import RESOURCES, ApiError, KubeClient, collection_path, object_path
from sbs.operator import (
    api,
    child_names,
    cluster_view,
    engine_pods,
    group_plan,
    group_state,
    kueue,
    network_policies,
    placement,
    scheduler_objects,
)
from sbs.operator import status as status_mod
from sbs.operator.autoscaling import role_scaler_api, role_scalers

log = logging.getLogger("sbs.operator")

CHILD_KINDS = ("ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Deployment", "Service", "NetworkPolicy")
PODGROUP_PLURAL = "podgroups"


@dataclass
class Result:
    writes: int
    requeue_after: float | None
    phase: str


def dep_path(namespace: str, name: str) -> str:
    return f"{collection_path(api.API_VERSION, api.PLURAL, namespace)}/{name}"


def validation_problem(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"InvalidSpec: {where}: {err['msg']}"


async def _list_children(client: KubeClient, dep: api.SBSDeployment, kind: str) -> list[dict[str, Any]]:
    api_version, plural, _ = RESOURCES[kind]
    selector = f"{labels.DEPLOYMENT}={dep.name}"
    items = await client.list(collection_path(api_version, plural, dep.namespace), label_selector=selector)
    owned = [
        i for i in items if any(o.get("uid") == dep.uid for o in i["metadata"].get("ownerReferences", []))
    ]
    return [{**i, "kind": kind, "apiVersion": api_version} for i in owned]  # list items carry neither


async def _converge(
    client: KubeClient, dep: api.SBSDeployment, desired: list[dict[str, Any]], observed: list[dict[str, Any]]
) -> None:
    """Apply changed children; delete owned ones no longer desired."""
    have = {(o.get("kind"), o["metadata"]["name"]): o for o in observed}
    want = set()
    for obj in map(with_spec_hash, desired):
        key = (obj["kind"], obj["metadata"]["name"])
        want.add(key)
        if needs_apply(obj, have.get(key)):
            await client.apply(obj, plural=PODGROUP_PLURAL if obj["kind"] == "PodGroup" else None)
    for key, obj in have.items():
        if key not in want:
            plural = PODGROUP_PLURAL if key[0] == "PodGroup" else None
            await client.delete(object_path(obj, plural))


async def _event(
    client: KubeClient, dep: api.SBSDeployment, type_: str, reason: str, message: str, now: float
) -> None:
    stamp = timestamps.rfc3339(now)
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{dep.name}.{secrets.token_hex(8)}", "namespace": dep.namespace},
        "involvedObject": {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "name": dep.name,
            "namespace": dep.namespace,
            "uid": dep.uid,
        },
        "type": type_,
        "reason": reason,
        "message": message,
        "source": {"component": "sbs-operator"},
        "reportingComponent": "sbs-operator",
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
    try:
        await client.create(collection_path("v1", "events", dep.namespace), event)
    except ApiError as exc:  # events are best effort
        log.warning("event %s for %s/%s not recorded: %s", reason, dep.namespace, dep.name, exc)


async def _write_status(client: KubeClient, raw: dict[str, Any], status: api.SBSDeploymentStatus) -> None:
    new = status.model_dump(by_alias=True, mode="json")
    if (raw.get("status") or {}) != new:
        patch = {"metadata": {"resourceVersion": raw["metadata"]["resourceVersion"]}, "status": new}
        await client.patch(dep_path(raw["metadata"]["namespace"], raw["metadata"]["name"]) + "/status", patch)


def pod_path(pod: dict[str, Any]) -> str:
    meta = pod["metadata"]
    return f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"


def _pods_of(pods: list[dict[str, Any]], action: group_plan.GroupAction) -> list[dict[str, Any]]:
    out = []
    for p in pods:
        found = p["metadata"].get("labels") or {}
        if (found.get(labels.ROLE), found.get(labels.GROUP), found.get(labels.TEMPLATE_HASH)) == (
            action.role, str(action.index), action.thash,
        ):  # fmt: skip
            out.append(p)
    return out


async def reconcile(
    client: KubeClient,
    namespace: str,
    name: str,
    now: float,
    *,
    gang_available: bool,
    view: cluster_view.ClusterView | None = None,
) -> Result | None:
    """Converge one SBSDeployment; None when it is gone or being deleted (garbage collection cleans up).
    `view`: the operator's shared cluster view (nodes, GPUs in use); a fresh one when None."""
    view = view or cluster_view.ClusterView()
    writes_before = sum(client.writes.values())
    raw = await client.get_or_none(dep_path(namespace, name))
    if raw is None or raw["metadata"].get("deletionTimestamp"):
        return None
    try:
        dep = api.SBSDeployment.model_validate(raw)
    except ValidationError as exc:
        problem = validation_problem(exc)
        log.warning("%s/%s: %s", namespace, name, problem)
        prev = api.SBSDeploymentStatus.model_validate(raw.get("status") or {})
        status = status_mod.invalid(prev, problem, int(raw["metadata"].get("generation", 0)), now)
        await _write_status(client, raw, status)
        return Result(sum(client.writes.values()) - writes_before, None, "Failed")

    observed_scalers = await _role_scalers(client, dep)
    dep = role_scalers.effective(
        dep, {r: role_scalers.desired_groups(dep, r, observed_scalers.get(r)) for r in api.ROLES}
    )
    spec = dep.spec
    queue = await _kueue_queue(client, view, dep)
    mode = spec.gang_scheduling.mode
    gang_spec = mode == "Enabled" or (mode == "Auto" and gang_available)
    # The template hash keeps the gang setting alone, so Kueue appearing or going away never restarts
    # running groups: only groups created from now on go through Kueue (and get no PodGroup).
    thashes = {r: engine_pods.template_hash(spec, r, gang_spec, dep.uid) for r in api.ROLES}
    gang = gang_spec and queue is None
    pods_path = collection_path("v1", "pods", namespace)
    pods = await client.list(pods_path, label_selector=labels.selector_string(labels.engine_selector(name)))
    pods = [p for p in pods if any(o.get("uid") == dep.uid for o in p["metadata"].get("ownerReferences", []))]
    nodes = await view.nodes(client) if pods else None
    down = {n.name: n.not_ready_since for n in (nodes or {}).values() if n.not_ready_since is not None}
    p = group_plan.plan(dep, pods, thashes, now, down)
    p.queued = await kueue.queued(client, dep, pods, now)

    problem = None
    engine_side = [engine_pods.headless_service(dep), *network_policies.objects(dep)]
    try:
        desired = [*engine_side, *scheduler_objects.objects(dep)]
    except scheduler_objects.SchedulerSettingsError as exc:
        problem = f"InvalidSchedulerSettings: {exc}"
        desired = engine_side
    observed: list[dict[str, Any]] = []
    for kind in CHILD_KINDS:
        observed += await _list_children(client, dep, kind)
    if problem is None:
        await _converge(client, dep, desired, observed)
    else:  # keep what runs; only the engine Service and the NetworkPolicies are safe to converge
        safe = {(o["kind"], o["metadata"]["name"]) for o in desired}
        await _converge(
            client, dep, desired, [o for o in observed if (o["kind"], o["metadata"]["name"]) in safe]
        )

    if gang:
        await _converge_podgroups(client, dep, pods, p)

    for action in p.drain:
        for pod in _pods_of(pods, action):
            if (pod["metadata"].get("labels") or {}).get(labels.RANK) == "0":
                annotations = {labels.DRAINING: "true", labels.DRAIN_SINCE: timestamps.rfc3339(now)}
                await client.patch(pod_path(pod), {"metadata": {"annotations": annotations}})
        what = f"{action.role} group {action.index} ({action.thash[:5]}) draining: {action.reason}"
        await _event(client, dep, "Normal", "GroupDraining", what, now)
    for action in p.delete:
        group = _pods_of(pods, action)
        for pod in group:
            await client.delete(pod_path(pod))
        if kueue.is_kueue_group(group):
            gid = child_names.group_id(dep.name, action.role, action.index, action.thash)
            await kueue.delete_workload(client, dep.namespace, gid)
        if not action.reason.startswith("GroupFailed"):
            what = f"{action.role} group {action.index} ({action.thash[:5]}) deleted: {action.reason}"
            await _event(client, dep, "Normal", "GroupDeleted", what, now)
    for pod in p.force_delete:
        await _force_delete(client, pod)
        node = pod["spec"]["nodeName"]
        what = f"pod {pod['metadata']['name']} force-deleted: Terminating on NotReady node {node}"
        await _event(client, dep, "Warning", "PodForceDeleted", what, now)
    for kind, reason, message in p.events:
        await _event(client, dep, kind, reason, message, now)
    for action in p.mark:
        await _mark_complete(client, _pods_of(pods, action))
    existing = {pod["metadata"]["name"] for pod in pods}
    placed = await _placed(client, view, dep, p.create, gang, queue)
    try:
        for action, pods_to_create, _ in placed:
            for pod in pods_to_create:
                if pod["metadata"]["name"] in existing:
                    continue  # an unfinished group: only its missing pods
                try:
                    await client.create(pods_path, pod)
                except ApiError as exc:
                    if exc.status != 409:
                        raise
            await _mark_complete(client, pods_to_create)  # the last write of a group: it is whole now
            what = f"{action.role} group {action.index} ({action.thash[:5]}): {action.reason}"
            await _event(client, dep, "Normal", "GroupCreated", what, now)
    finally:
        for *_, reservation in placed:
            if reservation is not None:
                view.settle(reservation)

    sched_deploy = next(
        (
            o
            for o in observed
            if o["kind"] == "Deployment" and o["metadata"]["name"] == child_names.scheduler_name(name)
        ),
        None,
    )
    sched = status_mod.scheduler_status(dep, sched_deploy, scheduler_objects.endpoint(dep))
    status = status_mod.build(
        dep, p, scheduler=sched, revision=engine_pods.serving_revision(spec), now=now, problem=problem
    )
    await _write_status(client, raw, status)
    for role in api.ROLES:
        want = role_scalers.scaler_status(dep, role, spec.role(role).groups, status.role(role).ready)
        current = observed_scalers.get(role) or {}
        if current and current.get("status") != want:
            path = object_path(
                {**current, "apiVersion": api.API_VERSION, "kind": role_scaler_api.KIND},
                role_scaler_api.PLURAL,
            )
            await client.patch(path + "/status", {"status": want})
    requeue = p.requeue_after
    if status.phase != "Ready" and requeue is None:
        requeue = 10.0
    return Result(sum(client.writes.values()) - writes_before, requeue, status.phase)


async def _converge_podgroups(
    client: KubeClient, dep: api.SBSDeployment, pods: list[dict[str, Any]], p: group_plan.Plan
) -> None:
    """One PodGroup per existing or planned group instance."""
    keys = {(a.role, a.index, a.thash) for a in p.create}
    for pod in pods:
        found = pod["metadata"]["labels"]
        keys.add((found[labels.ROLE], int(found[labels.GROUP]), found[labels.TEMPLATE_HASH]))
    deleted = {(a.role, a.index, a.thash) for a in p.delete}
    desired = [engine_pods.pod_group(dep, *k) for k in sorted(keys - deleted)]
    provider = engine_pods.GANG[dep.spec.gang_scheduling.provider]
    path = collection_path(provider["apiVersion"], PODGROUP_PLURAL, dep.namespace)
    items = await client.list(path, label_selector=f"{labels.DEPLOYMENT}={dep.name}")
    observed = [{**i, "kind": "PodGroup", "apiVersion": provider["apiVersion"]} for i in items]
    await _converge(client, dep, desired, observed)


async def _placed(
    client: KubeClient,
    view: cluster_view.ClusterView,
    dep: api.SBSDeployment,
    creates: list[group_plan.GroupAction],
    gang: bool,
    queue: str | None = None,
) -> list[tuple[group_plan.GroupAction, list[dict[str, Any]], cluster_view.Reservation | None]]:
    """The pods of each group to create, pinned to a topology domain that holds the whole group (an
    unfinished group: to its own domain), with the domain's reservation in `view`. With a Kueue
    `queue`, Kueue places them: nothing is pinned, and the roles alternate (`kueue.creation_order`).

    Larger groups are placed first. Without permission to list nodes, or when no domain has room
    (in a fresh listing), pods keep only their pod affinity and kube-scheduler decides (and reports
    what is missing). A domain is reserved as it is chosen (no `await` in between), so concurrent
    reconciles never pick the same free nodes.
    """
    out: list[tuple[group_plan.GroupAction, list[dict[str, Any]], cluster_view.Reservation | None]] = []
    if queue is None:
        creates = sorted(creates, key=lambda a: -dep.spec.role(a.role).nodes_per_group)
    else:
        creates = kueue.creation_order(creates)
    try:
        for action in creates:
            r = dep.spec.role(action.role)
            pods = engine_pods.group_pods(
                dep, action.role, action.index, action.thash, gang=gang, queue=queue
            )
            domain, reservation = action.domain, None
            other = _largest_requests(pods)
            if r.topology_key and not gang and queue is None and not action.unfinished:
                for max_age in (None, 0.0):  # the cached view, then a fresh one before giving up
                    alloc = await view.allocation(client, max_age)
                    if alloc is None:
                        break
                    free = view.free(
                        alloc, key=r.topology_key, selector=r.node_selector, gpus=r.gpus_per_node,
                        tolerations=r.tolerations, other=other,
                    )  # fmt: skip
                    domain = placement.choose(free, r.nodes_per_group)
                    if domain is not None:
                        reservation = view.reserve(
                            key=r.topology_key, domain=domain, nodes=r.nodes_per_group, gpus=r.gpus_per_node
                        )
                        break
            if r.topology_key and domain is not None and queue is None:
                pods = [placement.pin(pod, r.topology_key, domain) for pod in pods]
            out.append((action, pods, reservation))
    except BaseException:  # cancelled (leadership lost) or failed: nothing will be created
        for *_, reservation in out:
            if reservation is not None:
                view.settle(reservation)
        raise
    return out


async def _kueue_queue(
    client: KubeClient, view: cluster_view.ClusterView, dep: api.SBSDeployment
) -> str | None:
    """The LocalQueue new groups go to, or None for the built-in placer (`spec.placement`)."""
    p = dep.spec.placement
    if p.mode == "BuiltIn":
        return None
    if p.mode == "Kueue":
        return p.queue_name
    found = await view.cached(
        f"localqueue/{dep.namespace}/{p.queue_name}",
        lambda: kueue.queue_exists(client, dep.namespace, p.queue_name),
    )
    return p.queue_name if found else None


def _largest_requests(pods: list[dict[str, Any]]) -> dict[str, float]:
    """Per resource, the most any one pod of the group asks of its node."""
    out: dict[str, float] = {}
    for pod in pods:
        for k, v in placement.requests(pod).items():
            out[k] = max(out.get(k, 0.0), v)
    return out


async def _mark_complete(client: KubeClient, group: list[dict[str, Any]]) -> None:
    """Mark a group's leader: every pod of the group was created (see `group_plan`)."""
    leader = next((p for p in group if (p["metadata"].get("labels") or {}).get(labels.RANK) == "0"), None)
    if leader is not None:
        patch = {"metadata": {"annotations": {group_state.COMPLETE: "true"}}}
        await client.patch(pod_path(leader), patch)


async def _force_delete(client: KubeClient, pod: dict[str, Any]) -> None:
    """Delete now (grace 0) this pod, and only it: not a successor of the same name (UID precondition)."""
    body = {"gracePeriodSeconds": 0, "preconditions": {"uid": pod["metadata"]["uid"]}}
    try:
        await client.request("DELETE", pod_path(pod), body=body)
    except ApiError as exc:
        if exc.status not in (404, 409):
            raise


async def _role_scalers(client: KubeClient, dep: api.SBSDeployment) -> dict[str, dict[str, Any]]:
    """Each role's SBSRoleScaler, created when missing and kept equal to the spec for Static roles."""
    path = collection_path(api.API_VERSION, role_scaler_api.PLURAL, dep.namespace)
    items = await client.list(path, label_selector=f"{labels.DEPLOYMENT}={dep.name}")
    by_role = {
        i["spec"]["role"]: i
        for i in items
        if any(o.get("uid") == dep.uid for o in i["metadata"].get("ownerReferences", []))
    }
    for role in api.ROLES:
        r = dep.spec.role(role)
        current = by_role.get(role)
        if current is None:
            try:
                by_role[role] = await client.create(path, role_scalers.scaler(dep, role))
            except ApiError as exc:
                if exc.status != 409:
                    raise
        elif r.groups_owner == "Static" and current["spec"].get("replicas") != r.groups:
            obj_path = f"{path}/{current['metadata']['name']}"
            by_role[role] = await client.patch(obj_path, {"spec": {"replicas": r.groups}})
    return by_role
