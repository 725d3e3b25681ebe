"""Errors that end the agent's start-up; `cli.py` maps them to exit codes."""

from __future__ import annotations


class StartupError(Exception):
    """The agent cannot start: one line for the operator, already free of secrets."""
