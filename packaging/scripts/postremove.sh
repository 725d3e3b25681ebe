#!/bin/sh
# After removal: forget the unit. On dpkg "purge" also delete the agent's state and settings.
# rpm has no purge: `rpm -e` keeps /var/lib/smsagent, and an edited env file is kept as
# /etc/smsagent/smsagent.env.rpmsave.
set -eu

case "${1:-}" in
remove | purge | 0) ;;
*) exit 0 ;;
esac

if [ "$1" = purge ]; then
	rm -rf /var/lib/smsagent /run/smsagent /etc/smsagent
fi
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
	systemctl reset-failed smsagent.service 2>/dev/null || true
fi
