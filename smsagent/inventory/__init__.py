"""Facts about this server, shaped as the SMS registration body."""
