"""The migration target as this agent reaches it: `session.py` (SSH with the task's key)."""
