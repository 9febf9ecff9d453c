package upstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/textproto"
	"strings"
	"syscall"

	"github.com/emersion/go-smtp"
)

// Stage names the step of a delivery that failed. The values are part of the
// log contract (DESIGN.md, promise 3).
type Stage string

// The upstream stages, in the order a delivery passes them.
const (
	StageDNS      Stage = "dns"
	StageConnect  Stage = "connect"
	StageTLS      Stage = "tls"
	StageGreeting Stage = "greeting"
	StageEHLO     Stage = "ehlo"
	StageStartTLS Stage = "starttls"
	StageAuth     Stage = "auth"
	StageMail     Stage = "mail"
	StageRcpt     Stage = "rcpt"
	StageData     Stage = "data"
)

// Error is a failed delivery step: where it failed, what the server said, if
// anything, whether a retry can help, and what the user can do about it.
type Error struct {
	Stage        Stage
	Port         int
	Code         int    // SMTP reply code; 0 when the server said nothing
	EnhancedCode string // e.g. "5.7.8"; "" when absent
	Text         string // the server's reply text, or a description of the cause
	Temporary    bool
	Remedy       string
	Err          error // the underlying cause
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s failed", e.Stage)
	if e.Port != 0 {
		fmt.Fprintf(&b, " on port %d", e.Port)
	}
	b.WriteString(": ")
	if e.Code != 0 {
		fmt.Fprintf(&b, "%d ", e.Code)
		if e.EnhancedCode != "" {
			b.WriteString(e.EnhancedCode + " ")
		}
	}
	b.WriteString(e.Text)
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// AccountProblem reports a refusal of the account itself (wrong password,
// locked account): every message would fail the same way, so deliveries
// should pause rather than burn each message's retries.
func (e *Error) AccountProblem() bool {
	return e.Stage == StageAuth && !e.Temporary
}

// Unreachable reports a failure to reach a working SMTP server at all, as
// opposed to a refusal of this message: the upstream as a whole is down.
func (e *Error) Unreachable() bool {
	switch e.Stage {
	case StageDNS, StageConnect, StageTLS, StageGreeting, StageEHLO, StageStartTLS:
		return true
	}
	return e.Stage == StageAuth && e.Temporary
}

// portLevel reports a failure that the other port may not have: the ones
// that happen before any SMTP reply after authentication. Falling back after
// an AUTH refusal would only repeat it.
func (e *Error) portLevel() bool {
	switch e.Stage {
	case StageConnect, StageTLS, StageGreeting, StageEHLO, StageStartTLS:
		return true
	}
	return false
}

// SMTPReply returns the refusal as go-smtp's error type, for passing a
// permanent upstream refusal back to the local client unchanged.
func (e *Error) SMTPReply() *smtp.SMTPError {
	reply := &smtp.SMTPError{Code: e.Code, Message: e.Text}
	if reply.Code == 0 {
		reply.Code = 554
	}
	if ec, ok := parseEnhanced(e.EnhancedCode); ok {
		reply.EnhancedCode = ec
	}
	return reply
}

func parseEnhanced(s string) (smtp.EnhancedCode, bool) {
	var ec smtp.EnhancedCode
	if _, err := fmt.Sscanf(s, "%d.%d.%d", &ec[0], &ec[1], &ec[2]); err != nil {
		return ec, false
	}
	return ec, true
}

// newError classifies err at stage and port into an *Error with a remedy.
// This is the one place that decides transient versus permanent:
// SMTP 4xx are transient and 5xx permanent; network, timeout and TLS trouble
// is transient; anything unknown is treated as transient, since retrying a
// message costs little and dropping one costs the user a lost mail.
func newError(stage Stage, port int, err error) *Error {
	var ue *Error
	if errors.As(err, &ue) {
		return ue
	}
	e := &Error{Stage: stage, Port: port, Err: err, Temporary: true}
	var se *smtp.SMTPError
	var pe *textproto.Error
	switch {
	case errors.As(err, &se):
		e.Code, e.Text = se.Code, se.Message
		if se.EnhancedCode != smtp.EnhancedCodeNotSet && se.EnhancedCode != smtp.NoEnhancedCode {
			e.EnhancedCode = fmt.Sprintf("%d.%d.%d", se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2])
		}
	case errors.As(err, &pe):
		e.Code, e.Text = pe.Code, pe.Msg
		if first, rest, ok := strings.Cut(pe.Msg, " "); ok {
			if _, ok := parseEnhanced(first); ok {
				e.EnhancedCode, e.Text = first, rest
			}
		}
	default:
		e.Text = describe(err)
	}
	if e.Code >= 500 {
		e.Temporary = false
	}
	e.Remedy = remedy(e)
	return e
}

// describe turns a network or TLS error into words a user can search for.
func describe(err error) string {
	var (
		ne   net.Error
		dnse *net.DNSError
		hv   x509.HostnameError
		ua   x509.UnknownAuthorityError
		ci   x509.CertificateInvalidError
		rh   tls.RecordHeaderError
	)
	switch {
	case errors.Is(err, context.Canceled):
		return "delivery cancelled (relay shutting down)"
	case errors.As(err, &dnse):
		if dnse.IsNotFound {
			return fmt.Sprintf("host %s not found", dnse.Name)
		}
		return fmt.Sprintf("cannot look up %s: %s", dnse.Name, dnse.Err)
	case errors.As(err, &hv):
		return "certificate is not valid for " + hv.Host + " (" + certSummary(hv.Certificate) + ")"
	case errors.As(err, &ua):
		return "certificate issued by an unknown authority (" + certSummary(ua.Cert) + ")"
	case errors.As(err, &ci):
		return "invalid certificate: " + ci.Error()
	case errors.As(err, &rh):
		return "the server did not answer with TLS"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset by peer"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timed out"
	case errors.Is(err, errClosedEarly):
		return "the server closed the connection"
	case errors.Is(err, errReplyTooLarge):
		return errReplyTooLarge.Error()
	}
	return err.Error()
}

func certSummary(c *x509.Certificate) string {
	if c == nil {
		return "no certificate"
	}
	issuer := c.Issuer.CommonName
	if len(c.Issuer.Organization) > 0 {
		issuer = c.Issuer.Organization[0]
	}
	return fmt.Sprintf("subject %q, issued by %q", c.Subject.CommonName, issuer)
}

// remedy is the one-line advice for a non-expert. Issue #3 owns its wording;
// every failure gets one.
func remedy(e *Error) string {
	text := strings.ToLower(e.Text)
	switch e.Stage {
	case StageDNS:
		return "The relay cannot look up the mail server's name: check that this computer is online and that DNS works (try opening a web page)."
	case StageConnect:
		if strings.Contains(text, "refused") || strings.Contains(text, "timed out") {
			return fmt.Sprintf("Port %d is blocked or closed: your ISP, router or firewall may block outgoing mail ports; the relay tries the other port (465/587) by itself — if both fail, allow outgoing TCP 587 and 465 in the firewall or VPN.", e.Port)
		}
		return "The relay cannot reach the mail server: check the network connection, firewall and VPN."
	case StageTLS:
		if strings.Contains(text, "certificate") {
			return "The server's certificate is not the mail server's own: antivirus \"mail shield\", a VPN or a corporate proxy is intercepting TLS — turn off its email scanning for this program, or set upstream.ca_file to your organisation's CA."
		}
		return "The secure (TLS) connection failed: something on the network path interferes with TLS; try another network or disable TLS inspection in antivirus/VPN."
	case StageGreeting:
		if e.Code >= 400 {
			return "The mail server is refusing connections right now (busy or maintenance); the relay retries by itself — check Apple's System Status page if it lasts."
		}
		return "The connection opened but the server never said hello: something on the path (firewall, antivirus, captive portal) swallows the connection; try another network."
	case StageEHLO, StageStartTLS:
		return "The server did not offer a secure connection on this port: something on the path strips STARTTLS (a firewall or antivirus); the relay will not send without TLS — it tries port 465 instead."
	case StageAuth:
		if e.Temporary {
			return "The server refused logins for now (often too many attempts); the relay waits and retries by itself."
		}
		return "Apple refused the login: use an app-specific password (appleid.apple.com → Sign-In and Security → App-Specific Passwords), not your Apple Account password; two-factor authentication must be on; upstream.username must be the full address, e.g. name@icloud.com."
	case StageMail:
		if e.Code == 550 || e.Code == 553 || e.Code == 554 {
			return "iCloud refused the sender address: send from your iCloud address or one of its aliases; check that every address in sender.aliases really is an alias of this account, or set sender.rewrite to \"envelope\" or \"header\"."
		}
		if e.Code == 552 {
			return "The message is larger than iCloud accepts (about 20 MB): send the attachment another way, e.g. as a link."
		}
	case StageRcpt:
		if !e.Temporary {
			return "iCloud refused this recipient: check the address for typos; the other recipients are unaffected."
		}
	case StageData:
		if e.Code == 552 {
			return "The message is larger than iCloud accepts (about 20 MB): send the attachment another way, e.g. as a link."
		}
		if !e.Temporary {
			return "iCloud refused the message content (it may look like spam or break a limit); change the message and send again."
		}
	}
	if e.Temporary {
		return "A temporary problem on Apple's side or the network; the relay retries by itself — check Apple's System Status page if it lasts."
	}
	return "iCloud refused the message; read the server's reply above for the reason."
}
