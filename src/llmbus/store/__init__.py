"""The one store every stop reads and writes: tables (schema), their migrations, and the Store itself."""

from llmbus.store.db import CallRecord, Store, database_url, decode_call, now

__all__ = ["CallRecord", "Store", "database_url", "decode_call", "now"]
