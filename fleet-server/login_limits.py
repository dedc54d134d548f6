"""Sign-in rate limits, so a password cannot be guessed by trying many: per client address (every
attempt counts) and per username (wrong passwords count). Built on the `limits` library's moving
window in this process's memory: each replica keeps its own count, so N replicas behind a load
balancer allow at most N times the budget, which still stops guessing at any useful speed.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, RateLimitItemPerMinute, parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter


class LoginLimits:
    def __init__(self, per_minute_per_client: int, failures_per_user: int) -> None:
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._client: RateLimitItem = RateLimitItemPerMinute(per_minute_per_client)
        self._user: RateLimitItem = parse(f"{failures_per_user}/15 minutes")

    def attempt(self, client: str, username: str) -> float | None:
        """Count one attempt; the seconds to wait when it is over a limit (then it is not tried)."""
        if not self._limiter.test(self._user, "user", username.lower()):
            return self._wait(self._user, "user", username.lower())
        if not self._limiter.hit(self._client, "client", client):
            return self._wait(self._client, "client", client)
        return None

    def failed(self, username: str) -> None:
        self._limiter.hit(self._user, "user", username.lower())

    def _wait(self, item: RateLimitItem, *keys: str) -> float:
        reset_at = self._limiter.get_window_stats(item, *keys).reset_time
        return max(1.0, math.ceil(reset_at - time.time()))
