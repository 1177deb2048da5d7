"""What the operator does on the API, read from its code (not from its Roles), and the
SubjectAccessReview that asks whether a ServiceAccount may do it."""

from __future__ import annotations

from sbs.kube.blocking import Kube

SAR = "/apis/authorization.k8s.io/v1/subjectaccessreviews"

Need = tuple[str, str, str, str]
"""(verb, API group, resource[/subresource], namespace): "" is cluster-wide, "*ns*" any served namespace."""


def each(verbs: str, group: str, resources: str, namespace: str) -> list[Need]:
    return [(v, group, r, namespace) for r in resources.split() for v in verbs.split()]


NEEDS: list[Need] = [
    *each("get list watch", "sbs.dev", "sbsdeployments", ""),  # kopf, resync, reconcile
    *each("patch", "sbs.dev", "sbsdeployments/status", "*ns*"),  # reconciler._write_status
    *each("update", "sbs.dev", "sbsdeployments/finalizers", "*ns*"),  # blockOwnerDeletion on children
    *each("list watch", "sbs.dev", "sbsrolescalers", ""),  # kopf scaler events
    *each("create patch", "sbs.dev", "sbsrolescalers", "*ns*"),  # reconciler, autoscaler
    *each("patch", "sbs.dev", "sbsrolescalers/status", "*ns*"),
    *each("list", "sbs.dev", "sbsautoscalingpolicies", ""),  # autoscaler
    *each("patch", "sbs.dev", "sbsautoscalingpolicies/status", ""),
    *each("list watch", "", "pods", ""),  # kopf pod events; placement (all pods)
    *each("get create patch delete", "", "pods", "*ns*"),  # groups, drain; get: the scheduler's Role
    *each("list", "", "nodes", ""),  # placement (cluster_view)
    # server-side applied children (an apply that creates is authorized as create)
    *each("list create patch delete", "", "services configmaps serviceaccounts", "*ns*"),
    *each("list watch", "apps", "deployments", ""),  # kopf scheduler events
    *each("create patch delete", "apps", "deployments", "*ns*"),
    *each("list create patch delete", "rbac.authorization.k8s.io", "roles rolebindings", "*ns*"),
    *each("list create patch delete", "networking.k8s.io", "networkpolicies", "*ns*"),
    *each("list create patch delete", "scheduling.x-k8s.io", "podgroups", "*ns*"),
    *each("get", "kueue.x-k8s.io", "localqueues", "*ns*"),
    *each("get delete", "kueue.x-k8s.io", "workloads", "*ns*"),
    *each("create", "", "events", "*ns*"),
    *each("list watch", "apiextensions.k8s.io", "customresourcedefinitions", ""),  # kopf's resource scan
    *each("get create update", "coordination.k8s.io", "leases", "sbs-system"),  # leader.py
]

CLUSTER_SCOPED = {
    "nodes",
    "customresourcedefinitions",
    "sbsautoscalingpolicies",
    "sbsautoscalingpolicies/status",
}
"""Resources a Role cannot grant: what namespaced mode goes without."""


def allowed(k: Kube, user: str, verb: str, group: str, resource: str, namespace: str) -> bool:
    """Whether `user` (a ServiceAccount's `system:serviceaccount:<ns>:<name>`) may do it."""
    sa_namespace = user.split(":")[2]
    resource, _, sub = resource.partition("/")
    attrs = {"verb": verb, "group": group, "resource": resource, "subresource": sub}
    if namespace:
        attrs["namespace"] = namespace
    groups = ["system:serviceaccounts", f"system:serviceaccounts:{sa_namespace}", "system:authenticated"]
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {"user": user, "groups": groups, "resourceAttributes": attrs},
    }
    return k.create(SAR, review)["status"].get("allowed", False)
