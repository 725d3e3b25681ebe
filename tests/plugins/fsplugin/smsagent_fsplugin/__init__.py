"""Placeholder; the handler lands with the handler registry."""
