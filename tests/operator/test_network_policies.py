"""The operator's NetworkPolicies judged by cyclonus (tests/operator/cyclonus.py), an independent
implementation of the Kubernetes NetworkPolicy semantics: the truth table of docs/operator.md.

The e2e cluster has no CNI, so the policies are evaluated, not enforced; the objects themselves are
created on the real API server by the operator (test_operator_e2e.py converges them).
"""

from __future__ import annotations

import pytest
from sbs.kube import labels
from sbs.operator import api, network_policies

from tests.operator import cyclonus
from tests.operator.test_builders import NS, make_deployment

pytestmark = pytest.mark.e2e  # needs Go (cyclonus is built once, like the e2e binaries)

DEP = "deepseek-v3"
OTHER = "other"


def engine(dep: str, role: str, ns: str = NS) -> cyclonus.Peer:
    return cyclonus.Peer(ns, {**labels.common_labels(dep, labels.ENGINE), labels.ROLE: role})


def scheduler(dep: str, ns: str = NS) -> cyclonus.Peer:
    return cyclonus.Peer(ns, labels.common_labels(dep, labels.SCHEDULER))


PREFILL, DECODE, SCHEDULER = engine(DEP, "prefill"), engine(DEP, "decode"), scheduler(DEP)
OPERATOR = cyclonus.Peer("sbs-system", dict(network_policies.OPERATOR_POD_LABELS))
STRANGERS = {
    "a pod of the namespace": cyclonus.Peer(NS, {"app": "notebook"}),
    "another deployment's engine": engine(OTHER, "decode"),
    "another deployment's scheduler": scheduler(OTHER),
    "a pod of another namespace": cyclonus.Peer("team-b", {"app": "client"}),
}
HTTP, BOOTSTRAP, DIST, RANDOM = 30000, 8998, 5757, 51234
"""Engine ports: HTTP, prefill bootstrap, rendezvous, and one SGLang/NCCL/mooncake picks at random."""

# (source name, source, destination name, destination, port, allowed)
TABLE: list[tuple[str, cyclonus.Peer, str, cyclonus.Peer, int, bool]] = [
    ("scheduler", SCHEDULER, "prefill engine", PREFILL, HTTP, True),
    ("scheduler", SCHEDULER, "decode engine", DECODE, HTTP, True),
    ("scheduler", SCHEDULER, "prefill engine", PREFILL, BOOTSTRAP, False),
    ("scheduler", SCHEDULER, "prefill engine", PREFILL, RANDOM, False),
    ("decode engine", DECODE, "prefill engine", PREFILL, BOOTSTRAP, True),
    ("decode engine", DECODE, "prefill engine", PREFILL, RANDOM, True),
    ("prefill engine", PREFILL, "decode engine", DECODE, RANDOM, True),
    ("prefill engine", PREFILL, "prefill engine", PREFILL, DIST, True),
    ("prefill engine", PREFILL, "decode engine", DECODE, HTTP, True),
    *[
        (name, peer, "prefill engine", PREFILL, port, False)
        for name, peer in STRANGERS.items()
        for port in (HTTP, BOOTSTRAP, RANDOM)
    ],
    ("a pod of the namespace", STRANGERS["a pod of the namespace"], "scheduler", SCHEDULER, 8000, True),
    ("the SBS operator", OPERATOR, "scheduler", SCHEDULER, 8000, True),
    (
        "a pod of another namespace",
        STRANGERS["a pod of another namespace"],
        "scheduler",
        SCHEDULER,
        8000,
        False,
    ),
    ("a pod of the namespace", STRANGERS["a pod of the namespace"], "scheduler", SCHEDULER, 9999, False),
]


def judge(dep: api.SBSDeployment, rows: list[tuple]) -> list[bool]:
    connections = [cyclonus.Connection(src, dst, port) for _, src, _, dst, port, _ in rows]
    return cyclonus.allowed(network_policies.objects(dep), connections)


def test_truth_table_of_the_default_policies():
    verdicts = judge(make_deployment(), TABLE)
    lines = [
        f"| {s} | {d} | {p} | {'allowed' if v else 'denied'} |"
        for (s, _, d, _, p, _), v in zip(TABLE, verdicts, strict=True)
    ]
    print("\n| from | to | port | cyclonus |\n|---|---|---|---|\n" + "\n".join(lines))
    wrong = [
        (s, d, p, want) for (s, _, d, _, p, want), got in zip(TABLE, verdicts, strict=True) if got != want
    ]
    assert not wrong, wrong


def test_allowed_clients_replace_the_default_scheduler_clients():
    gateway = cyclonus.Peer("gateway", {"app": "envoy"})
    vpn, internet = cyclonus.Peer(None, ip="10.8.1.2"), cyclonus.Peer(None, ip="192.0.2.7")
    dep = make_deployment(
        scheduler={
            "allowedClients": [
                {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateway"}},
                    "podSelector": {"matchLabels": {"app": "envoy"}},
                },
                {"ipBlock": {"cidr": "10.8.0.0/16"}},
            ]
        }
    )
    rows = [
        ("gateway", gateway, "scheduler", SCHEDULER, 8000, True),
        ("gateway's other pods", cyclonus.Peer("gateway", {"app": "x"}), "scheduler", SCHEDULER, 8000, False),
        ("a pod of the namespace", STRANGERS["a pod of the namespace"], "scheduler", SCHEDULER, 8000, False),
        ("the SBS operator", OPERATOR, "scheduler", SCHEDULER, 8000, False),
        ("the VPN range", vpn, "scheduler", SCHEDULER, 8000, True),
        ("the internet", internet, "scheduler", SCHEDULER, 8000, False),
        ("the VPN range", vpn, "prefill engine", PREFILL, HTTP, False),
        ("scheduler", SCHEDULER, "prefill engine", PREFILL, HTTP, True),  # engines keep their own policy
    ]
    assert judge(dep, rows) == [r[-1] for r in rows]


def test_the_judge_can_say_no_to_a_policy_that_forgets_the_scheduler():
    policy = network_policies.engine_policy(make_deployment())
    policy["spec"]["ingress"] = policy["spec"]["ingress"][1:]  # only engine-to-engine left
    conn = cyclonus.Connection(SCHEDULER, PREFILL, HTTP)
    assert cyclonus.allowed([policy], [conn]) == [False]
    assert cyclonus.allowed([], [conn]) == [True]  # no policy selects a pod: everything reaches it
