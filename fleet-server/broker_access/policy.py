"""Which topics each kind of broker account may use: the one place the topic tree meets the ACL.

A box may publish only under its own up branch and subscribe only to its own down branch; the fleet
server reads every up branch (directly or through a shared subscription, for replicas) and writes
every down branch. Anything else is refused by the broker, which is what the `acl` tests attack.
"""

from __future__ import annotations

from typing import Any

from polewatch.protocol import topics

SERVER_ROLE = "polewatch-fleet-server"
ADMIN_ROLE = "polewatch-dynsec-admin"
# Where the broker publishes its own log lines (`log_dest topic`): the server reads refusals there.
BROKER_LOG_TOPIC = "$SYS/broker/log/#"
SHARE_GROUP = "polewatch"


# Between the device id and a rotated login's suffix: not a character device ids may hold, so one
# box's logins are never taken for another's.
LOGIN_SEPARATOR = "~"


def rotated_login(device_id: str, suffix: str) -> str:
    return f"{topics.check_device_id(device_id)}{LOGIN_SEPARATOR}{suffix}"


def is_login_of(username: str, device_id: str) -> bool:
    return username == device_id or username.startswith(device_id + LOGIN_SEPARATOR)


def device_role(device_id: str) -> str:
    return f"polewatch-device-{topics.check_device_id(device_id)}"


def _acl(acltype: str, topic: str, allow: bool = True) -> dict[str, Any]:
    return {"acltype": acltype, "topic": topic, "allow": allow}


def device_acls(device_id: str) -> list[dict[str, Any]]:
    """Publish to its own up branch; subscribe to, and receive from, its own down branch."""
    up = f"{topics.PREFIX}/{topics.check_device_id(device_id)}/up/#"
    down = topics.device_down_filter(device_id)
    return [
        _acl("publishClientSend", up),
        # subscribePattern: the filter the box asks for must be (inside) its own down branch; a
        # wildcard above it (`polewatch/#`, `#`) is not a pattern inside the branch and is refused.
        _acl("subscribePattern", down),
        _acl("publishClientReceive", down),
        _acl("unsubscribePattern", down),
    ]


def server_acls() -> list[dict[str, Any]]:
    up_all = topics.all_up()
    return [
        _acl("subscribePattern", up_all),
        _acl("subscribePattern", f"$share/{SHARE_GROUP}/{up_all}"),
        _acl("publishClientReceive", up_all),
        _acl("publishClientSend", f"{topics.PREFIX}/+/down/#"),
        _acl("subscribePattern", BROKER_LOG_TOPIC),
        _acl("publishClientReceive", BROKER_LOG_TOPIC),
    ]


def admin_acls() -> list[dict[str, Any]]:
    """Exactly what `mosquitto_ctrl dynsec init` gives its admin: the plugin's control topics."""
    return [
        _acl("publishClientSend", "$CONTROL/dynamic-security/#"),
        _acl("publishClientReceive", "$CONTROL/dynamic-security/#"),
        _acl("subscribePattern", "$CONTROL/dynamic-security/#"),
        _acl("publishClientReceive", "$SYS/#"),
        _acl("subscribePattern", "$SYS/#"),
    ]


def device_may_subscribe(device_id: str, topic_filter: str) -> bool:
    """Whether a subscription a box asked for stays inside its down branch (used to flag attempts)."""
    branch = topics.device_down_filter(device_id)[: -len("#")]
    return topic_filter.startswith(branch) or topic_filter == branch.rstrip("/")
