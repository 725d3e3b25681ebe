"""Built-in command handlers (STOP, SKIP, DELETE, the task notices), loaded like any plugin."""
