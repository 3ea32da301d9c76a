"""The keys of a running gateway and their limits: rate per minute and budget, shared through the store.

A key's budget holds each admitted request's estimated cost (`gateway_keys.estimate_cost`, an upper bound)
until its call is logged, then counts the real cost instead, so concurrent requests cannot overspend it by more
than the request admitted last — across every gateway process on the store, since spend, holds and the
per-minute windows live there (`store.gateway_state.KeyLedger`). Spend of keys without a budget is added with
their call-log rows (the batch writer); a budgeted key's spend is counted at once, so its next request sees it.
"""

from __future__ import annotations

from llmbus.errors import GatewayError
from llmbus.serve.gateway_keys import KeyConfig, bearer_token
from llmbus.store.gateway_state import Hold, KeyLedger, Refusal


class Keys:
    """The gateway's keys: who is calling (`caller`), may they (`authorize`), and their budget holds."""

    def __init__(self, keys: list[KeyConfig], ledger: KeyLedger):
        self.by_secret = {k.secret(): k for k in keys}
        self.ledger = ledger
        # whether admitting a request may wait on the store (a key with a rate limit or a budget)
        self.limited = any(k.requests_per_minute is not None or k.budget_usd is not None for k in keys)
        ledger.open([k.name for k in keys])

    def caller(self, header: str | None) -> KeyConfig | None:
        """The key an Authorization header names (None when the gateway has no keys); 401 for any other."""
        if not self.by_secret:
            return None
        key = self.by_secret.get(bearer_token(header))
        if key is None:
            raise GatewayError(401, "missing or unknown API key")
        return key

    def authorize(self, header: str | None) -> KeyConfig | None:
        """The caller's key (None when the gateway has no keys); enforces its rate limit and budget."""
        key = self.caller(header)
        if key is not None:
            refusal = self.ledger.admit(key.name, key.requests_per_minute, key.budget_usd)
            if refusal is not None:
                raise _refused(key, refusal)
        return key

    def hold(self, key: KeyConfig | None, estimate_usd: float, ttl_s: float) -> Hold | None:
        """Hold a request's estimated cost against its key's budget for at most `ttl_s` (429 once the spent and
        held amounts reach the budget); None for a key without a budget."""
        if key is None or key.budget_usd is None:
            return None
        held = self.ledger.hold(key.name, key.budget_usd, estimate_usd, ttl_s)
        if isinstance(held, Refusal):
            raise _refused(key, held)
        return held

    def settle(self, key: KeyConfig | None, hold: Hold | None, cost_usd: float) -> bool:
        """Count a budgeted key's call cost now and drop its hold; False (nothing done) for other keys, whose
        spend the call log's writer adds with the row."""
        if key is None or key.budget_usd is None:
            return False
        self.ledger.settle(hold, key.name, cost_usd)
        if hold is not None:
            hold.settled = True
        return True

    def release(self, hold: Hold | None) -> None:
        """Drop a hold its call never settled (a request that ended before it was logged)."""
        if hold is not None and not hold.settled:
            self.ledger.release(hold)
            hold.settled = True


def _refused(key: KeyConfig, refusal: Refusal) -> GatewayError:
    if refusal.kind == "rate_limit":
        wait = max(1, int(refusal.retry_after_s) + 1)
        return GatewayError(429, f"rate limit of {key.requests_per_minute}/min for key {key.name}",
                            {"Retry-After": str(wait)})
    in_flight = f", ${refusal.held_usd:.4g} more held by requests in flight" if refusal.held_usd > 0 else ""
    return GatewayError(429, f"budget of ${key.budget_usd:g} for key {key.name} is spent (${refusal.spent_usd:.4g}"
                             f"{in_flight})", kind="budget_exceeded")
