#!/bin/sh
# Before removal (deb: "remove" or "upgrade"; rpm: 0 = erase, 1 = upgrade).
# On removal the service stops and the sendmail alternative goes; the
# queue, config and logs stay (dpkg -P removes them).
set -e
case "$1" in
remove | 0)
	if [ -d /run/systemd/system ]; then
		systemctl disable --now icloud-relay >/dev/null 2>&1 || true
	fi
	if command -v update-alternatives >/dev/null 2>&1; then
		update-alternatives --remove sendmail /usr/bin/icloud-relay >/dev/null 2>&1 || true
	elif command -v alternatives >/dev/null 2>&1; then
		alternatives --remove sendmail /usr/bin/icloud-relay >/dev/null 2>&1 || true
	fi
	;;
esac
