"""llmbus: carry one LLM feature from prompt to production.

The package reads as the five stops, each importing only from the ones below it (tests/test_layers.py):
errors, settings and shared helpers → task/ → train/ → providers/ → store/ → run/ → advise/ (stop 1) →
quality/ (stop 3) | flows/ (stop 4) → distill/ (stop 5) → serve/ → web/ → project.py → cli/.
The names below load on first use, so `import llmbus` stays cheap. Start with `llmbus.open()` (a Project: the
stops as methods over one call log), `llmbus.load_task(path)` and `llmbus.get_model(ref)`; `llmbus.testing`
has a scripted provider for tests.
"""

from __future__ import annotations

import importlib
import logging
from importlib.metadata import PackageNotFoundError, version
from typing import Any

# A library's records are the application's to route: silent unless it (or LLMBUS_LOG_LEVEL in the CLI) adds a
# handler, so Python's last-resort handler never prints llmbus warnings on its own.
logging.getLogger("llmbus").addHandler(logging.NullHandler())

try:
    __version__ = version("llmbus")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

# public name -> the module that defines it ("module:name" where the module calls it otherwise)
_EXPORTS = {
    # the entry points: a project on a store, a task, a model
    "open": "llmbus.project",
    "Project": "llmbus.project",
    "load_task": "llmbus.project",
    "get_model": "llmbus.providers.model",
    "Model": "llmbus.providers.model",
    # options of a run
    "RunOptions": "llmbus.run.options",
    "ScaleOptions": "llmbus.run.options",
    "RunHooks": "llmbus.run.options",
    # values in and out
    "TaskSpec": "llmbus.task.spec",
    "Request": "llmbus.providers.base",
    "Completion": "llmbus.providers.base",
    "Run": "llmbus.store.rows",
    "Call": "llmbus.store.rows",
    # errors (the tree is drawn in llmbus.errors)
    "LlmbusError": "llmbus.errors",
    "SpecError": "llmbus.errors",
    "DataError": "llmbus.errors",
    "ModelError": "llmbus.errors",
    "ProviderError": "llmbus.errors",
    # flows: what a flow file needs (`from llmbus import FlowContext, flow`)
    "flow": "llmbus.flows.engine",
    "FlowContext": "llmbus.flows.engine",
    # what a flow file builds from (examples/support/flow.py): retrieval, examples in context, the guardrail
    "Doc": "llmbus.flows.retrieval",
    "Source": "llmbus.flows.retrieval",
    "build_index": "llmbus.flows.retrieval",
    "ExamplePool": "llmbus.flows.icl",
    "Guardrail": "llmbus.flows.guardrail",
    "Rule": "llmbus.flows.guardrail",
    "guarded_answer": "llmbus.flows.guardrail",
    # settings and reports of the stops' methods (Project.distill, Project.train_judge, Project.render_requests)
    "render_requests": "llmbus.project",
    "TrainSettings": "llmbus.train.student",
    "LoraSettings": "llmbus.distill.lora",
    "DistillReport": "llmbus.distill.distill",
    "LoraDistillReport": "llmbus.distill.lora_distill",
    # the lower-level functions the API is made of (kept for code written against them, and what bench/
    # measures piece by piece)
    "load_spec": "llmbus.task.spec",
    "load_items": "llmbus.task.data",
    "split_items": "llmbus.task.data",
    "Item": "llmbus.task.data",
    "open_provider": "llmbus.providers",
    "find_binary": "llmbus.providers.llamacpp",
    "free_port": "llmbus.providers.llamacpp",
    "balanced_pick": "llmbus.task.fewshot",
    "match_label": "llmbus.task.parsing",
    "draft_stats": "llmbus.providers.local",
    "Store": "llmbus.store",
    "CallRecord": "llmbus.store",
    "run_task": "llmbus.run.engine",
    # (no top-level `advise`: `llmbus.advise` is the stop-1 subpackage once imported; use Project.advise)
    "evaluate": "llmbus.quality.evaluate",
    "embed_texts": "llmbus.embed:embed",  # `llmbus.embed` is the module's name, so the function is renamed
    "train_head": "llmbus.train.student",
    "binary_agreement": "llmbus.quality.agreement",
    "training_set": "llmbus.quality.finetune",
    "TrainingSet": "llmbus.quality.finetune",
    "cross_validate": "llmbus.quality.finetune",
    "simulate_coverage": "llmbus.quality.coverage",
    "Coverage": "llmbus.quality.coverage",
    "head_probs": "llmbus.quality.active",
    "uncertainty_order": "llmbus.quality.active",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'llmbus' has no attribute {name!r}")
    module, _, attribute = _EXPORTS[name].partition(":")
    return getattr(importlib.import_module(module), attribute or name)


def __dir__() -> list[str]:
    """The public names (for completion and `dir(llmbus)`)."""
    return sorted(__all__)
