"""The one store every stop reads and writes: tables (schema), their migrations, the Store itself and the typed
rows its reads return."""

from llmbus.store.db import CallRecord, Store, database_url, decode_call, now
from llmbus.store.rows import Call, Run

__all__ = ["Call", "CallRecord", "Run", "Store", "database_url", "decode_call", "now"]
