"""Routing rules (`routes:` in the config): the first rule whose conditions all hold picks the alias.

This is where "cheap model for simple work, frontier model for hard work" is written down, e.g.
`{when: {prompt_tokens_gt: 6000}, use: chat-long}` or `{when: {feature: [moderation]}, use: chat-fast}`.
"""

from __future__ import annotations

from collections.abc import Sequence

from routing.config import RouteCondition, RouteRule
from routing.context import RequestContext, RequestFacts


def matches(condition: RouteCondition, facts: RequestFacts, context: RequestContext) -> bool:
    checks = (
        (condition.tenant, context.tenant),
        (condition.team, context.team),
        (condition.feature, context.feature),
        (condition.model, facts.model),
    )
    for allowed, actual in checks:
        if allowed is not None and actual not in allowed:
            return False
    for wanted, actual in (
        (condition.has_tools, facts.has_tools),
        (condition.has_images, facts.has_images),
        (condition.has_json_schema, facts.has_json_schema),
    ):
        if wanted is not None and wanted != actual:
            return False
    # Token conditions last: they are the only ones that may need the tokenizer.
    if condition.prompt_tokens_gt is not None and not facts.prompt_tokens > condition.prompt_tokens_gt:
        return False
    if condition.prompt_tokens_lt is not None and not facts.prompt_tokens < condition.prompt_tokens_lt:
        return False
    return True


def first_match(
    rules: Sequence[RouteRule], facts: RequestFacts, context: RequestContext, usable: set[str]
) -> tuple[int, RouteRule] | None:
    """The first rule that holds and leads to an alias of the request's kind (`usable`)."""
    for index, rule in enumerate(rules):
        if rule.use in usable and matches(rule.when, facts, context):
            return index, rule
    return None
