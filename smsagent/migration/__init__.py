"""MIGRATE_FILE: its handler, the work of a task, the rsync movers, pipeline and verification."""
