"""Priority classes of the outbox, and the one place that says which message kind is in which class.

When the disk budget runs out or the link comes back, the outbox must choose: what to give up first,
what to send first. The answer depends only on the class, never on the caller, so a new kind of
message gets its class here and nowhere else (docs/outbox.md explains the order).
"""

from __future__ import annotations

from enum import IntEnum


class Priority(IntEnum):
    """Higher value = more important: evicted later, replayed sooner."""

    TELEMETRY = 0  # periodic health: the next report supersedes it
    SNAPSHOT = 1  # pictures: large, useful, but an event without its picture still counts
    HEALTH_EVENT = 2  # camera-health and box state changes: rare, small, explain gaps
    ALERT = 3  # detections and other events an operator acts on: given up last

    @property
    def label(self) -> str:
        """The class name as written in config files and health reports."""
        return self.name.lower()


# Give up the least valuable first; send the most valuable first.
EVICTION_ORDER: tuple[Priority, ...] = (Priority.TELEMETRY, Priority.SNAPSHOT, Priority.HEALTH_EVENT, Priority.ALERT)
REPLAY_ORDER: tuple[Priority, ...] = tuple(reversed(EVICTION_ORDER))

# Message kind (the topic's last level) -> class. Kinds planned by later issues, for when they land:
# Config reports and command acks are box state changes: rare, small, and what an operator waits for
# after pressing a button, so they go with the health events.
PRIORITY_OF_KIND: dict[str, Priority] = {
    "health": Priority.TELEMETRY,
    "presence": Priority.HEALTH_EVENT,
    "camera_health": Priority.HEALTH_EVENT,
    "config_report": Priority.HEALTH_EVENT,
    "command_ack": Priority.HEALTH_EVENT,
    "detection": Priority.ALERT,
    "rule_event": Priority.ALERT,
    "snapshot": Priority.SNAPSHOT,
    # What the box gave up: as hard to replace as an alert, and the server needs it to account for gaps.
    "given_up": Priority.ALERT,
}


def priority_of(kind: str) -> Priority:
    """The class of a message kind; an unmapped kind is a programming error, reported as such."""
    try:
        return PRIORITY_OF_KIND[kind]
    except KeyError:
        known = ", ".join(sorted(PRIORITY_OF_KIND))
        raise ValueError(
            f"message kind {kind!r} has no outbox priority class; map it in priority.py (known: {known})"
        ) from None


def by_label(label: str) -> Priority:
    """The class named `label` ('telemetry', 'alert', ...)."""
    try:
        return Priority[label.upper()]
    except KeyError:
        known = ", ".join(p.label for p in EVICTION_ORDER)
        raise ValueError(f"unknown priority class {label!r}; classes are {known}") from None
