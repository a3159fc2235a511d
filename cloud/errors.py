"""Errors the CLI turns into one line: `citysense-cloud: what went wrong, what to do`.

Each class has its own exit code so scripts can tell a refusal from an unreachable broker.
"""

from __future__ import annotations


class CloudError(Exception):
    """Base: the message is the whole user-facing line (what went wrong, what to do)."""

    exit_code = 1


class ConfigError(CloudError):
    """The config file or a flag is missing, unreadable or invalid."""

    exit_code = 2


class UsageError(CloudError):
    """Bad arguments: unknown action, malformed NAME=VALUE, bad duration."""

    exit_code = 2


class BrokerUnreachableError(CloudError):
    """The broker did not accept our connection (network, TLS, credentials)."""

    exit_code = 5


class DatabaseError(CloudError):
    """The database cannot be opened or used."""

    exit_code = 6


# -- citysense-cloud command (cloud/command.py) ----------------------------------------


class CommandRefusedError(CloudError):
    """The device (signed result, ok = false) or the gateway refused the command."""

    exit_code = 3


class CommandTimeoutError(CloudError):
    """No result for the command within --wait."""

    exit_code = 4


class PublishRefusedError(CloudError):
    """The broker refused the publish or the subscription (PUBACK/SUBACK >= 0x80): ACL."""

    exit_code = 7
