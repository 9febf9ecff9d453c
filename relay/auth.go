package relay

import (
	"crypto/subtle"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/icloud-relay/icloud-relay/internal/saslserver"
	"github.com/icloud-relay/icloud-relay/logging"
)

// Local logins ([[listen.users]]). A password is only ever taken over TLS,
// except from this machine itself (127.0.0.1, ::1), whose old clients may
// know no TLS. Guessing is slowed and then stopped: after maxAuthFailures
// refused logins within authFailureWindow a client (an IPv4 address, or an
// IPv6 /64, which one host can fill with addresses) must wait until the
// window passes; after maxGlobalAuthFailures from other machines in all,
// no other machine may try until then (this machine still may).
const (
	maxAuthFailures       = 5
	maxGlobalAuthFailures = 50
	authFailureWindow     = 10 * time.Minute
	authFailureDelay      = time.Second
)

// loginLimits counts refused logins.
type loginLimits struct {
	mu      sync.Mutex
	clients map[netip.Prefix]*failureCount
	remote  failureCount // from other machines, in all
}

type failureCount struct {
	count int
	since time.Time
}

func newLoginLimits() loginLimits {
	return loginLimits{clients: map[netip.Prefix]*failureCount{}}
}

// current returns f, restarted when its window has passed.
func (f *failureCount) current(now time.Time) *failureCount {
	if now.Sub(f.since) > authFailureWindow {
		f.count, f.since = 0, now
	}
	return f
}

// blocked says how long a client must wait before logging in again.
func (l *loginLimits) blocked(client netip.Prefix, local bool, now time.Time) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	wait := time.Duration(0)
	if f := l.clients[client]; f != nil {
		if f.current(now).count >= maxAuthFailures {
			wait = authFailureWindow - now.Sub(f.since)
		} else if f.count == 0 {
			delete(l.clients, client)
		}
	}
	if !local && l.remote.current(now).count >= maxGlobalAuthFailures {
		wait = max(wait, authFailureWindow-now.Sub(l.remote.since))
	}
	return wait
}

// failed counts a refused login and returns the client's count.
func (l *loginLimits) failed(client netip.Prefix, local bool, now time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	f := l.clients[client]
	if f == nil {
		f = &failureCount{since: now}
		l.clients[client] = f
	}
	f.current(now).count++
	if !local {
		l.remote.current(now).count++
	}
	return f.count
}

// AuthMechanisms offers AUTH only where a password may be sent: over TLS,
// or from this machine.
func (ss *session) AuthMechanisms() []string {
	if !ss.loginAllowed() {
		return nil
	}
	return []string{sasl.Plain, sasl.Login}
}

func (ss *session) loginAllowed() bool {
	_, isTLS := ss.conn.TLSConnectionState()
	return isTLS || isLocal(ss.clientAddr())
}

func (ss *session) clientAddr() netip.Addr {
	ap, _ := netip.ParseAddrPort(ss.remote)
	return ap.Addr().Unmap()
}

// errEnded answers what a client still sends after a failed transfer
// (the guard reads nothing more; this covers what was already buffered).
var errEnded = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 4, 0}, Message: "The last transfer failed; closing the connection"}

func (ss *session) Auth(mech string) (sasl.Server, error) {
	if ss.guard.isEnded() {
		return nil, errEnded
	}
	if !ss.loginAllowed() {
		return nil, &smtp.SMTPError{Code: 538, EnhancedCode: smtp.EnhancedCode{5, 7, 11},
			Message: "Logins from other machines need TLS: use STARTTLS (or the relay's implicit-TLS port) first"}
	}
	addr := ss.clientAddr()
	client, local := clientKey(addr), isLocal(addr)
	if wait := ss.srv.logins.blocked(client, local, time.Now()); wait > 0 {
		return nil, &smtp.SMTPError{Code: 454, EnhancedCode: smtp.EnhancedCode{4, 7, 0},
			Message: fmt.Sprintf("Too many failed logins; try again in %s", wait.Round(time.Second))}
	}
	check := func(user, pass string) error {
		if ss.srv.checkUser(user, pass) {
			ss.authed = true
			return nil
		}
		n := ss.srv.logins.failed(client, local, time.Now())
		ss.srv.log.Warn().Str(logging.KeyStage, "accept").Str(logging.KeyClient, ss.remote).Str("username", user).Int("failures", n).
			Str("remedy", "Check the login in the client against [[listen.users]] in the relay's config.").Msg("local login refused")
		time.Sleep(authFailureDelay) // slows guessing
		return &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "Wrong username or password for this relay (see [[listen.users]] in its config)"}
	}
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainServer(func(_, user, pass string) error { return check(user, pass) }), nil
	case sasl.Login:
		return saslserver.NewLoginServer(check), nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

// checkUser accepts any login when no users are configured (the listener is
// then loopback-only): old clients that insist on AUTH must still work.
func (s *Server) checkUser(user, pass string) bool {
	if len(s.cfg.Users) == 0 {
		return true
	}
	want, ok := s.cfg.Users[user]
	if !ok {
		want = "\x00never" // compare anyway: timing must not reveal user names
	}
	return subtle.ConstantTimeCompare([]byte(pass), []byte(want)) == 1 && ok
}
