"""Pre-migration checks: `smsagent check` and the migration drill (PREMIGRATE)."""
