"""The gateway's read-only status page and /metrics, served with aiohttp."""

from .history import NodeHistory
from .server import WebServer

__all__ = ["NodeHistory", "WebServer"]
