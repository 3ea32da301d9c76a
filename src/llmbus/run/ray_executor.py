"""`--executor ray`: a run's items become a Ray Dataset answered by `map_batches` on the cluster's workers.

Each worker (a Ray Data actor) opens its own provider, its own connection to the store (for the exact cache
and the embedding cache) and its own example selector, renders its batch (nearest shots embedded in batches)
and answers it with `adapter.answer_batch` on a bounded thread pool — the same per-item work as the local
executor. Records stream back to the driver, which logs them as it does for a local run: batched writes that
replace any earlier attempt at the same (run, item), so a Ray task retried after a node failure never leaves
a row twice, and `--resume` works as for a local run. Ray's own docs call this pattern "batch inference with
an actor pool" (`ray.data.Dataset.map_batches` with a callable class and `concurrency=N`).

A multi-node cluster needs a store every node reaches: SQLite (one machine's file) is refused there.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from typing import Any

import numpy as np

from llmbus.errors import LlmbusError
from llmbus.extras import require
from llmbus.providers import open_provider
from llmbus.providers.base import batch_size
from llmbus.providers.config import ModelConfig
from llmbus.run.adapter import CallPlan, answer_batch
from llmbus.run.cache import ExactCache
from llmbus.run.executors import jobs_for
from llmbus.store import CallRecord, Store
from llmbus.task.data import Item, load_items, split_items
from llmbus.task.fewshot import ExampleSelector

BATCH = 64  # items per Ray task: small enough to spread over the workers, big enough to amortize a task
# Environment the workers need to find the same models, home folder and offline packages as the driver.
FORWARDED_ENV = ("LLMBUS_", "OPENAI_", "HF_", "TRANSFORMERS_", "SENTENCE_TRANSFORMERS_")


def _ray() -> Any:
    require("scale", "ray.data", "--executor ray")
    import ray

    return ray


class RayAnswerer:
    """One Ray Data actor: a provider, a store connection and a selector, kept for every batch it answers."""

    def __init__(self, plan: CallPlan, model: ModelConfig, db_url: str, concurrency: int):
        self.plan = plan
        self.store = Store(db_url)
        self.cache = ExactCache(self.store)
        # The pool is read from the task's files (the same path on every node), not shipped with each actor.
        pool = split_items(plan.spec, load_items(plan.spec)).pool
        self.selector = ExampleSelector(plan.spec, pool, self.store.embeddings)
        self.provider = open_provider(model)
        self.provider.check()
        self.threads = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="llmbus-ray-call")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Render and answer a batch of items; the records go back as one object column."""
        items = [Item(id=str(id_), fields=json.loads(fields), expected=json.loads(expected), where=str(where))
                 for id_, fields, expected, where in zip(batch["id"], batch["fields"], batch["expected"],
                                                         batch["where"], strict=True)]
        prompts = jobs_for(self.provider, self.plan.spec, items, self.selector)
        size = batch_size(self.provider)
        chunks = iter(lambda: list(islice(prompts, size)), [])
        futures = [self.threads.submit(answer_batch, self.plan, self.provider, self.cache, jobs) for jobs in chunks]
        records = [record for future in futures for record in future.result()]
        return {"record": np.array(records, dtype=object)}


class RayExecutor:
    """Runs the calls on a Ray cluster (`address`: "auto", ray://…, host:port; None starts a local one bound
    to 127.0.0.1). `workers` actors (default: one per node) each keep `concurrency` calls in flight."""

    def __init__(self, model: ModelConfig, store: Store, concurrency: int, address: str | None = None,
                 workers: int | None = None):
        self.model, self.store = model, store
        self.concurrency, self.address, self.workers = max(1, concurrency), address, workers
        self._started = False

    def answers(self, plan: CallPlan, items: Iterable[Item]) -> Iterator[list[CallRecord]]:
        """Records as the cluster finishes their batches."""
        items = list(items)  # Ray Data takes the rows at once
        ray = self._connect()
        nodes = [node for node in ray.nodes() if node.get("Alive")]
        if len(nodes) > 1 and self.store.engine.url.get_backend_name() == "sqlite":
            raise LlmbusError(f"--executor ray on {len(nodes)} nodes needs a store every node reaches: SQLite "
                              f"({self.store.url}) is one machine's file; give --db postgresql://…")
        if not items:
            return
        rows = [{"id": item.id, "fields": json.dumps(item.fields), "expected": json.dumps(item.expected),
                 "where": item.where or ""} for item in items]
        dataset = ray.data.from_items(rows, override_num_blocks=max(1, -(-len(items) // BATCH)))
        # Ray Data restarts an actor whose node died and retries its batches (max_restarts=-1 by default).
        answered = dataset.map_batches(
            RayAnswerer, batch_size=BATCH, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=self.workers or len(nodes)),
            fn_constructor_kwargs={"plan": plan, "model": self.model,
                                   "db_url": self.store.engine.url.render_as_string(hide_password=False),
                                   "concurrency": self.concurrency},
            num_cpus=0.25)  # calls wait on the network: a worker needs little CPU
        for batch in answered.iter_batches(batch_size=None, batch_format="numpy"):
            yield list(batch["record"])

    def drain(self, grace_s: float, stop_waiting: threading.Event | None = None) -> list[CallRecord]:
        """Batches still on the cluster are dropped: their items are what `--resume` answers."""
        return []

    def close(self) -> None:
        """Disconnect (and stop the local instance this executor started)."""
        if self._started:
            _ray().shutdown()
            self._started = False

    def _connect(self) -> Any:
        ray = _ray()
        if not ray.is_initialized():
            env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}
            try:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                         configure_logging=False, runtime_env={"env_vars": env},
                         **({"_node_ip_address": "127.0.0.1"} if self.address is None else {}))
            except ConnectionError as exc:
                raise LlmbusError(f"--executor ray: cannot reach the Ray cluster at {self.address}: {exc}") \
                    from None
            self._started = True
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # llmbus shows its own progress and summary
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the driver shows llmbus's own progress
        context.print_on_execution_start = False
        return ray
