"""What a session's graph has done: each run's outputs, each failure and the order runs
finished in (the history "-N" links index from the end).

A node outside any fan-out runs once and its run id is its node id. A node downstream of
an iterate runs once per item, and each run is keyed `<node id>#<index>`; inside nested
iterates the indexes follow outermost first: `<node id>#<i>#<j>`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from services.common.errors import EaselError
from services.invoker.invocations.base import BaseOutput

NODE_FAILED = "NODE_FAILED"
"""`error_type` of an exception of a node's own code that is no EaselError."""


def run_id(node_id: str, index: tuple[int, ...]) -> str:
    """The id of one run of a node: the node id, then `#<index>` per enclosing iterate."""
    if not index:
        return node_id
    return node_id + "".join(f"#{position}" for position in index)


class SettledStatus(StrEnum):
    """Where a session stands when no run is queued or running."""

    IDLE = "idle"
    """Some node can still run (it is ready, or becomes ready as others run)."""
    COMPLETED = "completed"
    """Every node has run successfully."""
    FAILED = "failed"
    """The last run had a failed node, or only failed nodes and their dependants are left."""
    CANCELLED = "cancelled"
    """The last run was cancelled."""


class RunMode(StrEnum):
    NEXT = "next"
    """Run the next ready node only."""
    ALL = "all"
    """Run every node that is or becomes ready."""


@dataclass(frozen=True)
class NodeFailure:
    """Why one run of a node failed. `cause` is the domain error the node raised, from
    which the servicer reads the status code; None for NODE_FAILED (code UNKNOWN)."""

    error_type: str
    error: str
    cause: EaselError | None = None

    @classmethod
    def of(cls, exc: BaseException) -> NodeFailure:
        if isinstance(exc, EaselError):
            return cls(exc.reason, exc.message, exc)
        return cls(NODE_FAILED, f"{type(exc).__name__}: {exc}")


@dataclass(frozen=True)
class NodeResult:
    """The outputs of one successful run, as the node's output object and as JSON."""

    node_id: str
    """The graph node this run belongs to."""
    output: BaseOutput
    outputs: Mapping[str, Any]
    cache_hit: bool
    """The outputs came from the node-output cache: the node was not computed again."""


@dataclass
class ExecutionState:
    """Results and failures by run id, and the history of successful runs in the order
    they finished."""

    results: dict[str, NodeResult] = field(default_factory=dict)
    errors: dict[str, NodeFailure] = field(default_factory=dict)
    executed: list[str] = field(default_factory=list)
    running: str = ""
    """Run id of the node executing now; empty when none."""
