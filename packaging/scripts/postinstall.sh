#!/bin/sh
# After install or upgrade (dpkg: "configure"; rpm: 1 = install, 2 = upgrade): build the venv,
# enable the unit when the package is being installed, restart the agent if it was running.
set -eu

UNIT=smsagent.service

systemd_running() {
	[ -d /run/systemd/system ]
}

env_file_filled() {
	grep -q '^[[:space:]]*SMSAGENT_[A-Z_]*=' /etc/smsagent/smsagent.env
}

case "${1:-}" in
configure | 1 | 2) ;;
# dpkg undoes a failed removal: the prerm already deleted the venv.
abort-remove) exec /usr/lib/smsagent/setup-venv ;;
*) exit 0 ;;
esac

# Removal deletes the venv, so its absence means an install: the first one, or one after a
# removal that kept the env file (dpkg then passes the old version, like an upgrade).
first_install=no
[ -d /usr/lib/smsagent/venv ] || first_install=yes

was_active=no
if systemd_running && systemctl is-active --quiet "$UNIT"; then
	was_active=yes
	systemctl stop "$UNIT"
fi

# The env file holds credentials. The state directory exists before the first start so that
# `smsagent status` works; systemd keeps it 0700 (StateDirectoryMode=) on every start.
chmod 0700 /etc/smsagent
chmod 0600 /etc/smsagent/smsagent.env
install -d -m 0700 /var/lib/smsagent
/usr/lib/smsagent/setup-venv
# The unit caches the agent's bytecode (PYTHONPYCACHEPREFIX); it belongs to the old venv.
rm -rf /var/cache/smsagent/bytecode

if systemd_running; then
	systemctl daemon-reload
fi
# Enabled when installing, not on upgrades, so an operator's `systemctl disable` survives. It is
# started only once the env file sets something (the template is all comments): a reinstall over
# a kept env file starts again, a first install waits for the operator.
if [ "$first_install" = yes ]; then
	systemctl enable --quiet "$UNIT"
fi
if [ "$was_active" = yes ] || { [ "$first_install" = yes ] && env_file_filled; }; then
	# --no-block: a package manager must not wait on the agent's start-up.
	if systemd_running; then
		systemctl start --no-block "$UNIT"
	fi
elif [ "$first_install" = yes ]; then
	echo "smsagent: fill in /etc/smsagent/smsagent.env, then run: systemctl start smsagent"
fi
