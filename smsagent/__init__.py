"""smsagent: the migration agent for Linux source servers (Huawei Cloud SMS v3 protocol)."""

from __future__ import annotations

__version__ = "0.1.0"
