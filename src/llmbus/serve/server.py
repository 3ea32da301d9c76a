"""Running the gateway under uvicorn: one process, or `workers` processes sharing one store.

The served tasks are warm before the port opens: each pool is embedded (read from the store's embedding cache
when it holds the vectors) and each backend started, with progress through the caller's callback. With
several workers the parent embeds the pools once and each worker then reads them from the store as it starts;
keys' limits and budgets, the exact and the semantic caches are shared through the store (limits.py,
run/cache.py), so N workers still allow each key its limit once.

Connections: uvicorn keeps an idle keep-alive connection open for `KEEP_ALIVE_S`, longer than client pools
keep theirs (httpx and the openai client 5 s, aiohttp 15 s, cloud load balancers 60 s), so the client always
closes first and never sends a request on a connection the server is closing (the dropped-connection
`ReadError` a pooled client otherwise meets now and then). SIGTERM or Ctrl-C: uvicorn stops accepting,
finishes the requests in flight (up to `GRACEFUL_S`), then the app's shutdown writes the queued call-log rows.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmbus.embed import StageCallback
from llmbus.serve.warmup import embed_pools, served_specs

if TYPE_CHECKING:
    from llmbus.serve.gateway import Gateway

KEEP_ALIVE_S = 75
GRACEFUL_S = 30
# How a worker process finds its serve.yaml and store (uvicorn starts workers from an import string).
CONFIG_ENV, DB_ENV = "LLMBUS_SERVE_CONFIG", "LLMBUS_DB"


def log_config(access_log: bool) -> dict[str, Any]:
    """uvicorn's logging setup plus the gateway's access log (`llmbus.serve.access`) on stderr."""
    from uvicorn.config import LOGGING_CONFIG

    config: dict[str, Any] = {**LOGGING_CONFIG, "loggers": dict(LOGGING_CONFIG["loggers"])}
    config["formatters"] = {**LOGGING_CONFIG["formatters"],
                            "llmbus": {"format": "%(asctime)s %(message)s", "datefmt": "%Y-%m-%dT%H:%M:%S"}}
    config["handlers"] = {**LOGGING_CONFIG["handlers"],
                          "llmbus": {"class": "logging.StreamHandler", "formatter": "llmbus",
                                     "stream": "ext://sys.stderr"}}
    config["loggers"]["llmbus.serve"] = {"handlers": ["llmbus"], "level": "INFO", "propagate": False}
    config["loggers"]["llmbus.serve.access"] = {"handlers": ["llmbus"] if access_log else [],
                                                "level": "INFO" if access_log else "WARNING", "propagate": False}
    return config


def prepare(config_path: Path, db: str | None, workers: int = 1,
            progress: StageCallback | None = None) -> Gateway | None:
    """Everything before the port opens: one process's gateway, built and warmed; for several workers, the
    pools embedded into the store once (each worker builds its own gateway as it starts) and None."""
    from llmbus.serve.gateway import Gateway, load_serve_config
    from llmbus.store import Store

    config = load_serve_config(config_path)
    if workers <= 1:
        gateway = Gateway(config, Store(db))
        try:
            gateway.start(progress)
        except BaseException:
            gateway.close()
            raise
        return gateway
    store = Store(db)  # migrated once here, before the workers open it
    embed_pools(served_specs(config.models, config.source), store.embeddings, progress)
    store.close()
    return None


def run(gateway: Gateway | None, config_path: Path, db: str | None, host: str, port: int, workers: int = 1,
        access_log: bool = True) -> None:
    """Serve until SIGTERM / Ctrl-C: the prepared gateway in this process, or `workers` worker processes."""
    import uvicorn

    from llmbus.serve.app import create_app

    options: dict[str, Any] = {"host": host, "port": port, "timeout_keep_alive": KEEP_ALIVE_S,
                               "timeout_graceful_shutdown": GRACEFUL_S, "access_log": False,
                               "log_config": log_config(access_log), "log_level": "warning"}
    if gateway is not None:
        uvicorn.run(create_app(gateway), **options)
        return
    os.environ[CONFIG_ENV] = str(Path(config_path).resolve())
    if db:
        os.environ[DB_ENV] = db
    uvicorn.run("llmbus.serve.server:worker_app", factory=True, workers=workers, **options)


def worker_app() -> Any:
    """The app of one worker process (uvicorn's factory): its own gateway on the shared store, warmed by the
    app's startup before this worker accepts a request."""
    from llmbus.serve.app import create_app
    from llmbus.serve.gateway import Gateway, load_serve_config
    from llmbus.store import Store

    return create_app(Gateway(load_serve_config(os.environ[CONFIG_ENV]), Store(os.environ.get(DB_ENV))))
