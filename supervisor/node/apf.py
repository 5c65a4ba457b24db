"""API Priority and Fairness for the node agents: a PriorityLevelConfiguration and a
FlowSchema for their common group (``apf render``), as YAML for the operator to apply.

Cluster configuration rather than a node's file, but made from the node's ``[identity]``
(the group every agent's certificate names), so it lives with the agent's identity.
``yaml`` is imported when rendering.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from supervisor.base.errors import UsageError
from supervisor.node.credentials import k8s_object_name


@dataclass(frozen=True, slots=True)
class ApfSettings:
    """Queueing values of the agents' priority level (see ``apf render --help``)."""

    name: str = "cilium-agents"
    group: str = "cilium-agents"
    nominal_concurrency_shares: int = 20
    lendable_percent: int = 0
    queues: int = 128
    hand_size: int = 6
    queue_length_limit: int = 50
    matching_precedence: int = 1000

    def validate(self) -> None:
        """The apiserver's own validation rules, so a bad value fails here, not at apply."""
        checks: list[tuple[bool, str]] = [
            (
                self.nominal_concurrency_shares >= 0,
                f"--shares {self.nominal_concurrency_shares}: must be >= 0",
            ),
            (
                0 <= self.lendable_percent <= 100,
                f"--lendable-percent {self.lendable_percent}: must be 0..100",
            ),
            (1 <= self.queues <= 512, f"--queues {self.queues}: must be 1..512"),
            (
                1 <= self.hand_size <= self.queues,
                f"--hand-size {self.hand_size}: must be 1..queues ({self.queues})",
            ),
            (
                math.ceil(math.log2(self.queues) * self.hand_size) <= 60
                if self.queues > 0
                else True,
                f"--hand-size {self.hand_size} with --queues {self.queues}: needs more than 60 "
                "bits of entropy (the apiserver's limit)",
            ),
            (
                self.queue_length_limit >= 1,
                f"--queue-length-limit {self.queue_length_limit}: must be >= 1",
            ),
            (
                2 <= self.matching_precedence <= 10000,
                f"--matching-precedence {self.matching_precedence}: must be 2..10000",
            ),
            (bool(self.group), "identity.group is empty"),
            (
                k8s_object_name(self.name) == self.name,
                f"--name {self.name!r}: must be a DNS subdomain name",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)


def render_apf(settings: ApfSettings) -> str:
    """A PriorityLevelConfiguration and a FlowSchema for the agents' group, as YAML.

    Every agent is its own flow (distinguisher ByUser), so fair queuing isolates agents from
    each other: one agent in a resync loop queues behind itself, and a fleet-wide restart storm
    is capped at this level's share of the apiserver instead of starving everyone else.
    """
    settings.validate()
    import yaml

    plc = {
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
        "kind": "PriorityLevelConfiguration",
        "metadata": {"name": settings.name},
        "spec": {
            "type": "Limited",
            "limited": {
                "nominalConcurrencyShares": settings.nominal_concurrency_shares,
                "lendablePercent": settings.lendable_percent,
                "limitResponse": {
                    "type": "Queue",
                    "queuing": {
                        "queues": settings.queues,
                        "handSize": settings.hand_size,
                        "queueLengthLimit": settings.queue_length_limit,
                    },
                },
            },
        },
    }
    fs = {
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
        "kind": "FlowSchema",
        "metadata": {"name": settings.name},
        "spec": {
            "priorityLevelConfiguration": {"name": settings.name},
            "matchingPrecedence": settings.matching_precedence,
            "distinguisherMethod": {"type": "ByUser"},
            "rules": [
                {
                    "subjects": [{"kind": "Group", "group": {"name": settings.group}}],
                    "resourceRules": [
                        {
                            "verbs": ["*"],
                            "apiGroups": ["*"],
                            "resources": ["*"],
                            "clusterScope": True,
                            "namespaces": ["*"],
                        }
                    ],
                    "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
                }
            ],
        },
    }
    header = (
        f"# API Priority and Fairness for the node agents in group {settings.group!r}.\n"
        "# Each agent authenticates as its own user, and the FlowSchema distinguishes flows\n"
        "# ByUser: fair queuing gives every agent its own queue share, so an agent stuck in a\n"
        "# resync loop waits behind itself, and a fleet-wide restart storm is held to this\n"
        "# priority level instead of starving the apiserver for everyone else.\n"
        f"#   nominalConcurrencyShares={settings.nominal_concurrency_shares}: this level's "
        "share of the apiserver's concurrency.\n"
        f"#   queues={settings.queues}, handSize={settings.hand_size}: shuffle sharding; each "
        "agent may use handSize of the queues.\n"
        f"#   queueLengthLimit={settings.queue_length_limit}: requests a queue holds before "
        "the apiserver answers 429.\n"
        f"#   matchingPrecedence={settings.matching_precedence}: ahead of global-default "
        "(9900), behind the system schemas.\n"
        "# The group still needs RBAC (a ClusterRoleBinding to the agent's ClusterRole).\n"
    )
    return header + yaml.safe_dump_all([plc, fs], sort_keys=False, explicit_start=True)
