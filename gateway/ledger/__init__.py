"""The usage ledger: one record per request, written off the hot path to SQLite or PostgreSQL."""

from gateway.ledger.record import UsageRecord
from gateway.ledger.writer import Ledger

__all__ = ["Ledger", "UsageRecord"]
