#!/bin/sh
# Before the files are unpacked: the unprivileged account the service runs
# as (a system user and group "icloud-relay", no login, no home of its own
# beyond the queue's parent).
set -e
if ! getent group icloud-relay >/dev/null; then
	groupadd --system icloud-relay
fi
if ! getent passwd icloud-relay >/dev/null; then
	useradd --system --gid icloud-relay --home-dir /var/lib/icloud-relay --no-create-home \
		--shell /usr/sbin/nologin --comment "iCloud Mail relay" icloud-relay
fi
