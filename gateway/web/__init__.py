"""The gateway's read-only status page and /metrics, served over h11 (web/http.py)."""

from .history import NodeHistory
from .server import WebServer

__all__ = ["NodeHistory", "WebServer"]
