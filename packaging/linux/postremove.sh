#!/bin/sh
# After removal. Only a purge (dpkg -P) removes the queue (with any mail
# still in it), the config, the password and the logs; the system account
# stays, as Debian does for system users (files it owned may remain).
set -e
case "$1" in
purge)
	rm -rf /var/lib/icloud-relay /var/log/icloud-relay /etc/icloud-relay
	;;
esac
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || true
fi
