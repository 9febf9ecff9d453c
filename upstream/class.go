package upstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/textproto"
	"regexp"
	"strings"
	"syscall"

	"github.com/emersion/go-smtp"
)

// Class is what a failure means for delivery. Classify gives every Error
// its class where the Error is made, by the rules in the package comment;
// the scheduler acts on the class alone, and it is saved with the attempt
// and logged (field "class").
type Class string

// The classes. GivenUp is never the class of a failure: the scheduler
// gives it to the final record of a message that reached delivery.max_age.
const (
	Retry          Class = "retry"
	Permanent      Class = "permanent"
	Unreachable    Class = "unreachable"
	Throttled      Class = "throttled"
	PauseAccount   Class = "pause_account"
	HoldDailyLimit Class = "hold_daily_limit"
	GivenUp        Class = "given_up"
)

// Meaning says in a few words what the class makes delivery do.
func (c Class) Meaning() string {
	switch c {
	case Retry:
		return "temporary: this message is tried again later"
	case Permanent:
		return "permanent: not tried again"
	case Unreachable:
		return "the server could not be reached: every message waits for it"
	case Throttled:
		return "logins refused for now: every delivery waits a little"
	case PauseAccount:
		return "the login was refused: every delivery is paused"
	case HoldDailyLimit:
		return "the daily sending limit: every message waits for the day to roll over"
	case GivenUp:
		return "given up at delivery.max_age"
	}
	return ""
}

// cause is what went wrong underneath, as far as it changes the advice.
type cause int

const (
	causeOther         cause = iota
	causeNoNetwork           // no route: this machine is offline
	causeNotFound            // the name does not exist (NXDOMAIN)
	causeDNS                 // the name server fails or does not answer
	causeRefused             // connection refused
	causeTimeout             // nothing answered in time
	causeCertHost            // a valid certificate, for other names
	causeCertAuthority       // a certificate from an unknown issuer
	causeCertInvalid         // expired, not yet valid, or otherwise broken
	causeCancelled           // the relay is shutting down
	causeUnsendable          // the relay's own check: this server cannot take it
)

// unsendable is the relay's own refusal of a message for a server, found
// before anything was sent: Classify makes it permanent.
type unsendable struct{ text, advice string }

func (u *unsendable) Error() string { return u.text }

// dailyLimitText recognises a refusal for the account's sending limit, in
// the words Apple uses ("You have exceeded your daily sending limit") and
// the usual variants.
var dailyLimitText = regexp.MustCompile(`(?i)(daily|per day|24 ?h|quota|sending limit|rate limit).*(limit|exceed|reached)|(limit|exceed|reached).*(daily|per day|24 ?h|quota)`)

// Classify turns err, met at stage on port, into an *Error with its text,
// class, advice and remedy. It is the one place that decides what a
// failure means (the table in the package comment). An *Error passes
// through unchanged.
func Classify(stage Stage, port int, err error) *Error {
	var ue *Error
	if errors.As(err, &ue) {
		return ue
	}
	e := &Error{Stage: stage, Port: port, Err: err}
	var se *smtp.SMTPError
	var pe *textproto.Error
	var un *unsendable
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
	case errors.As(err, &un):
		e.Text, e.cause = un.text, causeUnsendable
	default:
		e.Text, e.cause = describe(err)
	}
	e.Class = classOf(e)
	e.advise(advice(e))
	return e
}

// classOf is the table in the package comment, row by row.
func classOf(e *Error) Class {
	transaction := e.Stage == StageMail || e.Stage == StageRcpt || e.Stage == StageData
	switch {
	case e.cause == causeCancelled:
		return Retry
	case e.cause == causeUnsendable:
		return Permanent
	case transaction && e.Code >= 400 && dailyLimitText.MatchString(e.Text):
		return HoldDailyLimit
	case e.Stage == StageAuth && e.Code >= 500:
		return PauseAccount
	case e.Stage == StageAuth && e.Code >= 400:
		return Throttled
	case !transaction:
		return Unreachable
	case e.Code >= 500:
		return Permanent
	}
	return Retry
}

// advise sets the advice, and the remedy: the advice and what the relay
// does about the class by itself.
func (e *Error) advise(advice string) {
	e.Advice = advice
	e.Remedy = strings.TrimSpace(advice + " " + consequence(e.Class))
}

func consequence(c Class) string {
	switch c {
	case Retry:
		return "The relay retries by itself."
	case Unreachable:
		return "Messages wait in the queue and go out by themselves as soon as the server can be reached."
	case Throttled:
		return "The relay waits a little and retries by itself."
	case PauseAccount:
		return "Deliveries are paused and messages stay queued: once it is fixed, restart the relay or run `icloud-relay queue retry`."
	case HoldDailyLimit:
		return "Messages stay queued and go out by themselves once the last 24 hours allow more."
	}
	return ""
}

const loginAdvice = "Apple refused the login: use an app-specific password (appleid.apple.com → Sign-In and Security → App-Specific Passwords), not your Apple Account password; two-factor authentication must be on; upstream.username must be the full address, e.g. name@icloud.com."

const noNetworkAdvice = "This computer has no network connection (no route to the internet): check Wi-Fi or the network cable, and that the network is up."

const sizeAdvice = "The message is larger than iCloud accepts (about 20 MB): send the attachment another way, e.g. as a link, and set listen.max_message_size no higher than iCloud's limit."

// advice is what to check or change about e's cause, for a non-expert.
func advice(e *Error) string {
	switch e.Class {
	case HoldDailyLimit:
		return "iCloud's daily sending limit is reached (about 1,000 messages or 1,000 recipients a day); spread large mailings over several days."
	case PauseAccount:
		return loginAdvice
	case Throttled:
		return "iCloud refuses logins for now (often after too many attempts in a short time)."
	}
	if e.cause == causeUnsendable {
		var un *unsendable
		errors.As(e.Err, &un)
		return un.advice
	}
	if e.cause == causeNoNetwork {
		return noNetworkAdvice
	}
	switch e.Stage {
	case StageDNS:
		var dnse *net.DNSError
		name := "the server's name"
		if errors.As(e.Err, &dnse) {
			name = dnse.Name
		}
		if e.cause == causeNotFound {
			return fmt.Sprintf("The name %s does not exist: check upstream.host for a typo (iCloud's server is smtp.mail.me.com).", name)
		}
		return fmt.Sprintf("The name server this computer uses does not answer for %s: check the DNS settings of the router or VPN, or try another network (opening a web page tells whether DNS works).", name)
	case StageConnect:
		if e.cause == causeRefused || e.cause == causeTimeout {
			return fmt.Sprintf("Port %d is blocked or closed: your ISP, router or firewall may block outgoing mail ports; the relay tries the other port (465/587) by itself — if both fail, allow outgoing TCP 587 and 465 in the firewall or VPN.", e.Port)
		}
		return "The relay cannot reach the mail server: check the network connection, firewall and VPN."
	case StageTLS:
		var hv x509.HostnameError
		var ci x509.CertificateInvalidError
		switch {
		case e.cause == causeCertHost && errors.As(e.Err, &hv):
			return fmt.Sprintf("The server's certificate is valid, but for %s, not for %s: upstream.host is probably wrong (iCloud's server is smtp.mail.me.com); if it is right, something on the network sends the connection elsewhere.", certNames(hv.Certificate), hv.Host)
		case e.cause == causeCertAuthority:
			return "The server's certificate is not the mail server's own: antivirus \"mail shield\", a VPN or a corporate proxy is intercepting TLS — turn off its email scanning for this program, or set upstream.ca_file to your organisation's CA."
		case e.cause == causeCertInvalid && errors.As(e.Err, &ci) && ci.Reason == x509.Expired:
			return "The server's certificate is expired or not yet valid: check this computer's date and time first; if they are right, something on the network intercepts the connection."
		}
		return "The secure (TLS) connection failed: something on the network path interferes with TLS; try another network or disable TLS inspection in antivirus/VPN."
	case StageGreeting:
		if e.Code >= 400 {
			return "The mail server is refusing connections right now (busy or maintenance); check Apple's System Status page if it lasts."
		}
		return "The connection opened but the server never said hello: something on the path (firewall, antivirus, captive portal) swallows the connection; try another network."
	case StageEHLO, StageStartTLS:
		return "The server did not offer a secure connection on this port: something on the path strips STARTTLS (a firewall or antivirus); the relay will not send without TLS — it tries port 465 instead."
	case StageMail:
		switch {
		case e.Code == 552:
			return sizeAdvice
		case e.Class == Permanent:
			return "iCloud refused the sender address: send from your iCloud address or one of its aliases; check that every address in sender.aliases really is an alias of this account, or set sender.rewrite to \"envelope\" or \"header\"."
		}
	case StageRcpt:
		if e.Class == Permanent {
			return "iCloud refused this recipient: check the address for typos; the other recipients are unaffected."
		}
	case StageData:
		switch {
		case e.Code == 552:
			return sizeAdvice
		case e.Class == Permanent:
			return "iCloud refused the message content (it may look like spam or break a limit); change the message and send again."
		}
	}
	if e.Class == Permanent {
		return "iCloud refused the message; the server's reply says why."
	}
	if e.cause == causeCancelled {
		return "The relay was stopped during the delivery."
	}
	return "A temporary problem on Apple's side or on the network; check Apple's System Status page if it lasts."
}

// describe turns a network or TLS error into words a user can search
// for, and names its cause.
func describe(err error) (string, cause) {
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
		return "delivery cancelled (relay shutting down)", causeCancelled
	case errors.As(err, &dnse):
		if dnse.IsNotFound {
			return fmt.Sprintf("host %s not found", dnse.Name), causeNotFound
		}
		if offline(err) {
			return fmt.Sprintf("cannot look up %s: no network (%s)", dnse.Name, dnse.Err), causeNoNetwork
		}
		return fmt.Sprintf("cannot look up %s: %s", dnse.Name, dnse.Err), causeDNS
	case errors.As(err, &hv):
		return "certificate is not valid for " + hv.Host + " (" + certSummary(hv.Certificate) + ")", causeCertHost
	case errors.As(err, &ua):
		return "certificate issued by an unknown authority (" + certSummary(ua.Cert) + ")", causeCertAuthority
	case errors.As(err, &ci):
		return "invalid certificate: " + ci.Error(), causeCertInvalid
	case errors.As(err, &rh):
		return "the server did not answer with TLS", causeOther
	case errors.Is(err, syscall.ENETUNREACH), errors.Is(err, syscall.EHOSTUNREACH):
		return "no route to the server: " + err.Error(), causeNoNetwork
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused", causeRefused
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset by peer", causeOther
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timed out", causeTimeout
	case errors.Is(err, errClosedEarly):
		return "the server closed the connection", causeOther
	case errors.Is(err, errReplyTooLarge):
		return errReplyTooLarge.Error(), causeOther
	}
	return err.Error(), causeOther
}

// offline tells a lookup that failed because this machine has no network
// from one whose name server fails: the error says there is no route, or
// no interface but loopback is up with an address.
func offline(err error) bool {
	text := strings.ToLower(err.Error())
	if strings.Contains(text, "network is unreachable") || strings.Contains(text, "no route to host") ||
		strings.Contains(text, "unreachable network") || strings.Contains(text, "unreachable host") {
		return true
	}
	ifaces, ierr := net.Interfaces()
	if ierr != nil {
		return false
	}
	for _, ifc := range ifaces {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		if addrs, _ := ifc.Addrs(); len(addrs) > 0 {
			return false
		}
	}
	return true
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

// certNames lists the names a certificate is valid for.
func certNames(c *x509.Certificate) string {
	if c == nil {
		return "no name"
	}
	names := append([]string(nil), c.DNSNames...)
	for _, ip := range c.IPAddresses {
		names = append(names, ip.String())
	}
	if len(names) == 0 && c.Subject.CommonName != "" {
		names = append(names, c.Subject.CommonName)
	}
	if len(names) > 4 {
		names = append(names[:4], "…")
	}
	return strings.Join(names, ", ")
}
