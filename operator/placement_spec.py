"""The API's placement settings: Kueue, gang PodGroups or the operator's own placer (docs/placement.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from sbs.operator.crd_model import ApiModel


class GangScheduling(ApiModel):
    """PodGroups for scheduler-plugins (`scheduling.x-k8s.io`) or Volcano, so a group is placed whole."""

    mode: Literal["Auto", "Enabled", "Disabled"] = Field(
        default="Auto", description="Auto: only when the PodGroup CRD is installed."
    )
    provider: Literal["scheduler-plugins", "volcano"] = "scheduler-plugins"
    scheduler_name: str | None = Field(
        default=None, max_length=253, description="Pod schedulerName; the provider's usual name by default."
    )


class Placement(ApiModel):
    """Who gives engine groups their nodes: Kueue (all-or-nothing admission and topology placement,
    the production path) or the operator's own placer (with PodGroups where `gangScheduling` applies)."""

    mode: Literal["Auto", "Kueue", "BuiltIn"] = Field(
        default="Auto",
        description=(
            "Auto: Kueue when the LocalQueue `queueName` exists in the deployment's namespace, else "
            "BuiltIn. Decided per group as it is created: a switch never restarts running groups."
        ),
    )
    queue_name: str = Field(
        default="sbs",
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="The Kueue LocalQueue engine groups are submitted to (label kueue.x-k8s.io/queue-name).",
    )
