"""``st-serve --json-logs``: every log line (st-serve's, uvicorn's, its access log) as one JSON object."""

from __future__ import annotations

import logging
import time

import orjson


class JsonFormatter(logging.Formatter):
    """{"timestamp", "level", "logger", "message"(, "exception")} per record."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def json_logging(level: str) -> None:
    """Send the root logger's records (uvicorn's loggers propagate to it when uvicorn gets no log config) to
    stderr as JSON lines."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
