"""The one store every stop reads and writes: tables (schema), their migrations, the Store itself and the typed
rows its reads return."""

from llmbus.store.db import CONTENT_FREE, CallRecord, Store, database_url, decode_call, items_only, now
from llmbus.store.rows import Call, Run

__all__ = ["CONTENT_FREE", "Call", "CallRecord", "Run", "Store", "database_url", "decode_call", "items_only", "now"]
