"""One exception tree for the whole project.

Catch these narrowly at boundaries (CLI, wire, Redis); anything else is a bug and should crash.
Every exception class the project defines derives from `LbError` (tests/common/test_errors.py
walks the packages to hold that), the command lines' exit codes included: `Rejected` (2) and
`Failed` (1) are click exceptions, so every CLI (msctl, agentd, msrv) maps its errors to the
design's exit codes with the same two classes.
"""

from __future__ import annotations

import click


class LbError(Exception):
    """Base of every error this project raises on purpose."""


class ValidationError(LbError, ValueError):
    """A value given by a person or a file is wrong; the message names the part at fault."""


class UnknownSettingError(ValidationError):
    """A setting name that is not in the settings table."""


class UnknownAlgorithmError(ValidationError):
    """An algorithm name that is not registered."""


class PropertiesError(LbError):
    """An agent.properties file cannot be read or holds a bad value."""


class ProtocolError(LbError):
    """A wire message is malformed, oversized or missing fields."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class StoreUnavailableError(LbError):
    """Redis cannot be reached; retryable."""


class Rejected(LbError, click.ClickException):
    """A command line's value or usage was refused: exit 2, nothing changed."""

    exit_code = 2


class Failed(LbError, click.ClickException):
    """A command could not do its job at run time: exit 1."""

    exit_code = 1
