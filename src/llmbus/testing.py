"""Test helpers llmbus ships for code built on it: `ScriptedProvider`, a provider answering from a script."""

from llmbus.providers.testing import ScriptedProvider

__all__ = ["ScriptedProvider"]
