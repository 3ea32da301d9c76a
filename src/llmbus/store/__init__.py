"""The one store every stop reads and writes: tables (schema), their migrations, and the Store itself."""

from llmbus.store.db import CONTENT_FREE, CallRecord, Store, database_url, decode_call, items_only, now

__all__ = ["CONTENT_FREE", "CallRecord", "Store", "database_url", "decode_call", "items_only", "now"]
