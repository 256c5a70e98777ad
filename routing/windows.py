"""Two counters over a sliding time window, in fixed memory: a ring of time buckets.

Circuit breakers count calls and failures, retry budgets first attempts and extra ones; both need
"how many in the last N seconds" on every call, without keeping a timestamp per event.
"""

from __future__ import annotations


class SlidingPair:
    """Counts of two kinds of event (`first`, `second`) over the last `span_s` seconds, in `buckets`
    equal time buckets; a bucket is cleared when the window moves past it."""

    __slots__ = ("bucket_s", "buckets", "first", "second", "_head")

    def __init__(self, span_s: float, buckets: int) -> None:
        self.buckets = max(buckets, 1)
        self.bucket_s = span_s / self.buckets
        self.first = [0] * self.buckets
        self.second = [0] * self.buckets
        self._head = -1  # the bucket number (time // bucket_s) of the newest slot

    def _slot(self, now: float) -> int:
        bucket = int(now // self.bucket_s)
        if bucket != self._head:
            for step in range(1, min(bucket - self._head, self.buckets) + 1):
                slot = (self._head + step) % self.buckets
                self.first[slot] = self.second[slot] = 0
            self._head = bucket
        return bucket % self.buckets

    def add(self, now: float, first: int = 0, second: int = 0) -> None:
        slot = self._slot(now)
        self.first[slot] += first
        self.second[slot] += second

    def totals(self, now: float) -> tuple[int, int]:
        self._slot(now)
        return sum(self.first), sum(self.second)

    def clear(self) -> None:
        self.first = [0] * self.buckets
        self.second = [0] * self.buckets
