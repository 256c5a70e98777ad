"""What a request cost, from its usage and the serving deployment's price.

Prices are per million tokens (input, cached input, output) and, for endpoints billed by compute time
(Replicate), per second. Cached prompt tokens are part of `prompt_tokens` and are billed at the cached
rate when one is set. Reasoning tokens are part of `completion_tokens` (as OpenAI reports them) and are
billed as output. Amounts are rounded to micro-dollars, the unit budgets are kept in.
"""

from __future__ import annotations

from dataclasses import dataclass

from routing.config import Price

_PER_MTOK = 1_000_000.0
DEFAULT_OUTPUT_ESTIMATE = 256  # output tokens assumed at admission when the request sets no limit


@dataclass(frozen=True, slots=True)
class Tokens:
    prompt: int = 0
    completion: int = 0
    cached: int = 0
    reasoning: int = 0

    @classmethod
    def of(cls, usage: dict[str, object] | None) -> Tokens:
        """From an OpenAI `usage` object (missing fields count as zero)."""
        if not usage:
            return cls()
        prompt_details = usage.get("prompt_tokens_details") or {}
        completion_details = usage.get("completion_tokens_details") or {}
        return cls(
            prompt=_int(usage.get("prompt_tokens")),
            completion=_int(usage.get("completion_tokens")),
            cached=_int(prompt_details.get("cached_tokens") if isinstance(prompt_details, dict) else 0),
            reasoning=_int(completion_details.get("reasoning_tokens") if isinstance(completion_details, dict) else 0),
        )

    @property
    def total(self) -> int:
        return self.prompt + self.completion


def cost_usd(tokens: Tokens, price: Price | None, compute_s: float | None = None) -> float:
    if price is None:
        return 0.0
    cached = min(tokens.cached, tokens.prompt)
    cached_rate = price.input_per_mtok if price.cached_input_per_mtok is None else price.cached_input_per_mtok
    total = (
        (tokens.prompt - cached) * price.input_per_mtok
        + cached * cached_rate
        + tokens.completion * price.output_per_mtok
    ) / _PER_MTOK
    if price.per_second is not None and compute_s is not None:
        total += compute_s * price.per_second
    return round(total, 6)


def estimated_cost_usd(price: Price | None, prompt_tokens: int, output_tokens: int | None) -> float:
    """The cost admission reserves against a budget, before the answer exists."""
    expected = Tokens(prompt=prompt_tokens, completion=output_tokens or DEFAULT_OUTPUT_ESTIMATE)
    return cost_usd(expected, price)


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
