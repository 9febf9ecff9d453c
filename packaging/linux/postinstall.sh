#!/bin/sh
# After unpacking (deb: "configure"; rpm: 1 = install, 2 = upgrade).
# The service account owns the queue and logs; the config directory is
# root's, readable by all (sendmail reads it). A password file, or a config holding a
# password inline, is readable by root and the service only. The service
# is not started: it needs an account first ("sudo icloud-relay setup").
set -e
install -d -m 0750 -o icloud-relay -g icloud-relay /var/lib/icloud-relay
install -d -m 0700 -o icloud-relay -g icloud-relay /var/lib/icloud-relay/queue
install -d -m 0750 -o icloud-relay -g icloud-relay /var/log/icloud-relay
chown root:root /etc/icloud-relay
chmod 0755 /etc/icloud-relay # sendmail, run by any user, reads the config
for secret in /etc/icloud-relay/password; do
	if [ -f "$secret" ]; then
		chown root:icloud-relay "$secret"
		chmod 0640 "$secret"
	fi
done
if grep -Eq '^[[:space:]]*password[[:space:]]*=' /etc/icloud-relay/config.toml 2>/dev/null; then
	chown root:icloud-relay /etc/icloud-relay/config.toml
	chmod 0640 /etc/icloud-relay/config.toml
fi

# sendmail for PHP, cron and scripts: a low-priority alternative. An MTA
# that ships /usr/sbin/sendmail as a file of its own (Postfix, Exim) keeps
# it: update-alternatives does not replace a file that is not its link.
if command -v update-alternatives >/dev/null 2>&1; then
	update-alternatives --install /usr/sbin/sendmail sendmail /usr/bin/icloud-relay 10 >/dev/null 2>&1 || true
elif command -v alternatives >/dev/null 2>&1; then
	alternatives --install /usr/sbin/sendmail sendmail /usr/bin/icloud-relay 10 >/dev/null 2>&1 || true
fi

if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || true
	# An upgrade restarts a relay that runs; a new install waits for setup.
	if systemctl is-active --quiet icloud-relay 2>/dev/null; then
		systemctl restart icloud-relay || true
	fi
fi
if ! grep -q '^username = "[^"]' /etc/icloud-relay/config.toml 2>/dev/null; then
	echo "icloud-relay: run \"sudo icloud-relay setup\" to give your iCloud account and start the service."
fi
