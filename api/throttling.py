"""Per-key publish rate: a fixed-window counter. A batch counts each of its events.

This throttle serves the DRF publish views, which answer in the embedded mode (the counter
is then in Django's local-memory cache). With Redis, POST /api/notify(/batch) take the
publish route of api/fast.py, which counts the same windows of `parse_rate` in Redis, in the
round trip that also checks its API key (api/keys.py). DRF's SimpleRateThrottle keeps a list
of timestamps per key, which costs O(rate) per request; a counter costs one INCR.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured
from redis.exceptions import RedisError
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from realtime.conf import notifier_settings

from .authentication import Publisher

logger = logging.getLogger(__name__)

PERIODS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600, "d": 86400}


def parse_rate(rate: str) -> tuple[int, int]:
    """'1000/s' -> (1000, 1)."""
    try:
        count, period = rate.split("/", 1)
        return int(count), PERIODS[period.strip().lower()]
    except (ValueError, KeyError):
        raise ImproperlyConfigured(f"NOTIFIER_PUBLISH_RATE_PER_KEY={rate!r}: use N/s, N/m, N/h or N/d") from None


class PublishRateThrottle(BaseThrottle):
    def __init__(self) -> None:
        self.limit, self.period = parse_rate(notifier_settings.PUBLISH_RATE_PER_KEY)
        self._window_end = 0.0

    def allow_request(self, request: Request, view: Any) -> bool:
        user = request.user
        if not isinstance(user, Publisher):
            return True  # authentication refuses the request anyway
        cost = int(getattr(view, "throttle_cost", lambda request: 1)(request))
        now = time.time()
        window = int(now // self.period)
        self._window_end = (window + 1) * self.period
        key = f"notifier:rate:{user.key.pk}:{window}"
        try:
            cache.add(key, 0, timeout=self.period + 1)
            try:
                used = cache.incr(key, cost)
            except ValueError:  # expired between add and incr
                cache.add(key, cost, timeout=self.period + 1)
                used = cost
        except (RedisError, OSError) as exc:
            # Fail open: with Redis down the publish itself answers 503, which says more than 429.
            logger.warning("publish rate check skipped: %s", exc)
            return True
        return bool(used <= self.limit)

    def wait(self) -> float | None:
        return max(0.0, self._window_end - time.time())
