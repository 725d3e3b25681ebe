"""Built-in command handlers."""
