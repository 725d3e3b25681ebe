#!/bin/sh
# Before removal (dpkg: "remove"; rpm: 0 = erase): stop and disable the agent while its unit file
# still exists, and delete the venv the package built, so the package's own directories end up
# empty and go with it, and the bytecode cache the unit kept for that venv. Upgrades (dpkg
# "upgrade", rpm 1) leave the agent running; the new postinstall restarts it.
set -eu

UNIT=smsagent.service

case "${1:-}" in
remove | 0) ;;
*) exit 0 ;;
esac

if [ -d /run/systemd/system ]; then
	systemctl stop "$UNIT" || true
fi
systemctl disable --quiet "$UNIT" || true
rm -rf /usr/lib/smsagent/venv
rm -rf /var/cache/smsagent
