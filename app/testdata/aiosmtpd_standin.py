"""An iCloud stand-in that shares no code with the project's: Python's
aiosmtpd, which offers neither PIPELINING nor CHUNKING. STARTTLS on one
port, implicit TLS on the other, AUTH (PLAIN, LOGIN) required after TLS.
Refuses nobody@example.com at RCPT; writes every message it takes to
OUTDIR/N.eml (the envelope in X-Envelope- lines first), or with OUTDIR "-"
only counts it (for bench --upstream, BENCHMARKS.md). Prints "ready" and
runs until its standard input ends.

usage: aiosmtpd_standin.py STARTTLS_PORT TLS_PORT CERT KEY USER PASSWORD OUTDIR
"""
import logging
import os
import ssl
import sys
import threading
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

starttls_port, tls_port, cert, key, user, password, outdir = sys.argv[1:8]
logging.getLogger("mail.log").setLevel(logging.ERROR)  # its own deprecation notes
lock = threading.Lock()
taken = 0


class Handler:
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.lower() == "nobody@example.com":
            return "550 5.1.1 <nobody@example.com>: no such user"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        global taken
        with lock:
            taken += 1
            n = taken
        if outdir == "-":
            return "250 2.0.0 Ok: queued as %d" % n
        head = "X-Envelope-From: %s\r\nX-Envelope-To: %s\r\n" % (envelope.mail_from, ",".join(envelope.rcpt_tos))
        with open(os.path.join(outdir, "%d.eml.tmp" % n), "wb") as f:
            f.write(head.encode() + envelope.original_content)
        os.rename(os.path.join(outdir, "%d.eml.tmp" % n), os.path.join(outdir, "%d.eml" % n))
        return "250 2.0.0 Ok: queued as %d" % n


def authenticate(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and auth_data.login.decode() == user and auth_data.password.decode() == password
    return AuthResult(success=ok, handled=False)


ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(cert, key)
common = dict(authenticator=authenticate, auth_required=True, auth_require_tls=True, server_hostname="aiosmtpd.test")
controllers = [
    Controller(Handler(), hostname="127.0.0.1", port=int(starttls_port), tls_context=ctx, require_starttls=True, **common),
    Controller(Handler(), hostname="127.0.0.1", port=int(tls_port), ssl_context=ctx, **common),
]
for c in controllers:
    c.start()
print("ready", flush=True)
try:
    while sys.stdin.read(1):  # ends when the test closes stdin or dies
        pass
finally:
    for c in controllers:
        c.stop()
