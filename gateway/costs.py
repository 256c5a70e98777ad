"""What a request cost, from its usage and the serving deployment's price.

Prices are per million tokens (input, cached input, output) and, for endpoints billed by compute time
(Replicate), per second. Cached prompt tokens are part of `prompt_tokens` and are billed at the cached
rate when one is set. Reasoning tokens are part of `completion_tokens` (as OpenAI reports them) and are
billed as output. Amounts are rounded to micro-dollars, the unit budgets are kept in.
"""

from __future__ import annotations

from providers.schema import Usage
from routing.config import Price

_PER_MTOK = 1_000_000.0
DEFAULT_OUTPUT_ESTIMATE = 256  # output tokens assumed at admission when the request sets no limit


def cost_usd(usage: Usage, price: Price | None, compute_s: float | None = None) -> float:
    if price is None:
        return 0.0
    cached = min(usage.cached_tokens, usage.prompt_tokens)
    cached_rate = price.input_per_mtok if price.cached_input_per_mtok is None else price.cached_input_per_mtok
    total = (
        (usage.prompt_tokens - cached) * price.input_per_mtok
        + cached * cached_rate
        + usage.completion_tokens * price.output_per_mtok
    ) / _PER_MTOK
    if price.per_second is not None and compute_s is not None:
        total += compute_s * price.per_second
    return round(total, 6)


def estimated_cost_usd(price: Price | None, prompt_tokens: int, output_tokens: int | None) -> float:
    """The cost admission reserves against a budget, before the answer exists."""
    expected = Usage(prompt_tokens=prompt_tokens, completion_tokens=output_tokens or DEFAULT_OUTPUT_ESTIMATE)
    return cost_usd(expected, price)
