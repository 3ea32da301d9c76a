"""A backend call on the gateway's event loop: providers with an async `acomplete` (OpenAI-compatible
endpoints: vLLM, hosted APIs, llama-server's OpenAI API) are awaited, so a request waiting on its backend holds
no thread; any other provider (in-process students and encoders, cascades, `local:` models whose calls also
score labels and count CPU) runs in the gateway's bounded executor. Either way the route's timeout applies.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor

from llmbus.errors import GatewayError, ProviderError
from llmbus.providers import Provider, Request
from llmbus.providers.base import Completion


async def call(provider: Provider, request: Request, executor: Executor, timeout_s: float) -> Completion:
    """One provider call within `timeout_s` (asyncio.TimeoutError past it)."""
    acomplete = getattr(provider, "acomplete", None)
    if acomplete is not None:
        completion: Completion = await asyncio.wait_for(acomplete(request), timeout_s)
        return completion
    loop = asyncio.get_running_loop()
    return await asyncio.wait_for(loop.run_in_executor(executor, provider.complete, request), timeout_s)


async def call_with_fallbacks(providers: dict[str, Provider], refs: list[str], request: Request,
                              executor: Executor, timeout_s: float) -> tuple[Completion, str, str]:
    """The first answer among the route's models in order: (completion, model used, backend | fallback);
    a 502 GatewayError naming each model's failure when none answers."""
    errors = []
    for position, ref in enumerate(refs):
        try:
            completion = await call(providers[ref], request, executor, timeout_s)
            return completion, ref, "backend" if position == 0 else "fallback"
        except TimeoutError:
            errors.append(f"{ref}: no answer within {timeout_s:g}s")
        except ProviderError as exc:
            errors.append(f"{ref}: {exc}")
    raise GatewayError(502, "all backends failed: " + "; ".join(errors))
