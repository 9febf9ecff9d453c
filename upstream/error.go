package upstream

import (
	"fmt"
	"strings"

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
// anything, what it means for delivery (Class), and what the user can do
// about it. Classify makes one; nothing else decides its class.
type Error struct {
	Stage        Stage
	Port         int
	Code         int    // SMTP reply code; 0 when the server said nothing
	EnhancedCode string // e.g. "5.7.8"; "" when absent
	Text         string // the server's reply text, or a description of the cause
	Class        Class
	// Advice is what to check or change about the cause; Remedy is Advice
	// and what the relay does by itself about the class, in one line.
	Advice string
	Remedy string
	Err    error // the underlying cause
	cause  cause
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
