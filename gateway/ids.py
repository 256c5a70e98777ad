"""Unique ids for requests and usage records, cheaply.

A random 64-bit prefix per process plus a counter is unique across replicas and restarts for all
practical purposes, and costs a string format instead of an `os.urandom` syscall per id (uuid4 showed
in the request path's profile).
"""

from __future__ import annotations

import itertools
import os

_PREFIX = os.urandom(8).hex()
_COUNTER = itertools.count(1)


def new_id(kind: str) -> str:
    """`<kind>_<16 hex of process prefix><counter in hex>`, e.g. `req_3f9a…e1` or `rec_3f9a…e2`."""
    return f"{kind}_{_PREFIX}{next(_COUNTER):x}"


def _reseed_after_fork() -> None:
    global _PREFIX, _COUNTER
    _PREFIX = os.urandom(8).hex()  # a forked worker must not repeat its parent's ids
    _COUNTER = itertools.count(1)


os.register_at_fork(after_in_child=_reseed_after_fork)
