package logging

import (
	"strconv"
	"time"

	"github.com/rs/zerolog"

	"github.com/icloud-relay/icloud-relay/relay/queue"
	"github.com/icloud-relay/icloud-relay/upstream"
)

// The log's vocabulary: the field names of the contract. Durations are
// whole milliseconds in a field named *_ms; times are RFC 3339.
const (
	KeyQueueID      = "queue_id"
	KeyMessageID    = "message_id"
	KeyFrom         = "from"
	KeyTo           = "to" // the recipients (a refused one: that address)
	KeyClient       = "client"
	KeySize         = "size"
	KeyStage        = "stage"
	KeyClass        = "class"
	KeyPort         = "port"
	KeyFailedPort   = "failed_port"
	KeyCode         = "smtp_code"
	KeyEnhancedCode = "enhanced_code"
	KeyError        = "error"
	KeyRemedy       = "remedy"
	KeyAttempt      = "attempt"
	KeyNextRetry    = "next_retry"
	KeyTookMS       = "took_ms"
	KeyProbeEveryMS = "probe_every_ms"
	KeyDelivered    = "delivered"
	KeyPending      = "pending"
	KeyFailed       = "failed"
	KeyRewrittenTo  = "rewritten_to"
	KeyQueued       = "queued"
	KeySentToday    = "sent_today"
	KeyRcptsToday   = "recipients_today"
	KeyVersion      = "version" // the relay's build (internal/buildinfo)
)

// RemedyQueueDir is the remedy of every failure to write the queue.
const RemedyQueueDir = "The queue directory cannot be written: check free disk space and the permissions of queue.dir."

// The events about a message or the upstream, by their fixed messages.
const (
	EvAccepted          = "message accepted"
	EvEnvelopeRewritten = "envelope sender rewritten (sender.rewrite)"
	EvFromRewritten     = "From header rewritten (sender.rewrite = header); the original is in Reply-To unless one was set"
	EvDelivered         = "delivered"
	EvRecipientRefused  = "recipient refused"
	EvAttemptFailed     = "delivery failed; will retry"
	EvFailed            = "delivery failed permanently; message moved to the failed area"
	EvGaveUp            = "message given up at delivery.max_age; moved to the failed area"
	EvPaused            = "iCloud refused the login: all deliveries paused (messages stay queued)"
	EvHeld              = "iCloud's daily sending limit reached: deliveries held until it resets"
	EvUnreachable       = "upstream unreachable: queued messages wait and are sent as soon as a probe sees it again"
	EvResumed           = "upstream reachable again: delivering queued messages now"
	EvPortSwitched      = "port failed; switched to the other port"
	EvStatusPage        = "status page listening"
	EvStatusAction      = "change made on the status page"
	EvStatusUnavailable = "status page cannot listen; the relay goes on without it"
)

// mail adds the fields that name a message: every line about one has them.
func mail(ev *zerolog.Event, m *queue.Message) *zerolog.Event {
	to := make([]string, len(m.Rcpts))
	for i, r := range m.Rcpts {
		to[i] = r.Addr
	}
	ev.Str(KeyQueueID, m.ID)
	if m.MessageID != "" {
		ev.Str(KeyMessageID, m.MessageID)
	}
	return ev.Str(KeyFrom, m.From).Strs(KeyTo, to)
}

// Failure adds a failure's fields: stage, class, port, codes, the error
// and its one remedy.
func Failure(ev *zerolog.Event, e *upstream.Error) *zerolog.Event {
	if e == nil {
		return ev
	}
	ev.Str(KeyStage, string(e.Stage)).Str(KeyClass, string(e.Class))
	if e.Port != 0 {
		ev.Int(KeyPort, e.Port)
	}
	if e.Code != 0 {
		ev.Int(KeyCode, e.Code)
	}
	if e.EnhancedCode != "" {
		ev.Str(KeyEnhancedCode, e.EnhancedCode)
	}
	return ev.Str(KeyError, e.Text).Str(KeyRemedy, e.Remedy)
}

// Accepted: the intake took a message from client.
func Accepted(l zerolog.Logger, m *queue.Message, client string) {
	mail(l.Info(), m).Str(KeyClient, client).Int64(KeySize, m.Size).Msg(EvAccepted)
}

// EnvelopeRewritten: sender.rewrite replaced the envelope sender was.
func EnvelopeRewritten(l zerolog.Logger, m *queue.Message, was string) {
	l.Info().Str(KeyQueueID, m.ID).Str(KeyFrom, was).Str(KeyRewrittenTo, m.From).Msg(EvEnvelopeRewritten)
}

// FromRewritten: sender.rewrite = header replaced the From header was.
func FromRewritten(l zerolog.Logger, m *queue.Message, was, now string) {
	l.Info().Str(KeyQueueID, m.ID).Str(KeyFrom, was).Str(KeyRewrittenTo, now).Msg(EvFromRewritten)
}

// Delivered: every recipient has the message.
func Delivered(l zerolog.Logger, m *queue.Message, port int, took time.Duration) {
	mail(l.Info(), m).Int(KeyPort, port).Int(KeyAttempt, m.Attempts).Int64(KeyTookMS, took.Milliseconds()).Msg(EvDelivered)
}

// RecipientRefused: the upstream refused one recipient (for now or for good).
func RecipientRefused(l zerolog.Logger, m *queue.Message, addr string, e *upstream.Error) {
	ev := l.Warn()
	if e.Class == upstream.Permanent {
		ev = l.Error()
	}
	ev.Str(KeyQueueID, m.ID)
	if m.MessageID != "" {
		ev.Str(KeyMessageID, m.MessageID)
	}
	Failure(ev.Str(KeyFrom, m.From).Str(KeyTo, addr), e).Int(KeyAttempt, m.Attempts).Msg(EvRecipientRefused)
}

// AttemptFailed: the message stays queued for another attempt.
func AttemptFailed(l zerolog.Logger, m *queue.Message, e *upstream.Error, delivered, pending int) {
	Failure(mail(l.Warn(), m), e).Int(KeyAttempt, m.Attempts).Time(KeyNextRetry, m.NextAttempt).
		Int(KeyDelivered, delivered).Int(KeyPending, pending).Msg(EvAttemptFailed)
}

// Failed: the message is in the failed area, for e (its class given_up
// when it reached delivery.max_age).
func Failed(l zerolog.Logger, m *queue.Message, e *upstream.Error, delivered, failed int) {
	msg := EvFailed
	if e.Class == upstream.GivenUp {
		msg = EvGaveUp
	}
	Failure(mail(l.Error(), m), e).Int(KeyAttempt, m.Attempts).Int(KeyDelivered, delivered).Int(KeyFailed, failed).Msg(msg)
}

// Paused: the login was refused; every delivery waits until until.
func Paused(l zerolog.Logger, e *upstream.Error, until time.Time) {
	Failure(l.Error(), e).Time(KeyNextRetry, until).Msg(EvPaused)
}

// Held: the daily sending limit; every delivery waits until until.
func Held(l zerolog.Logger, e *upstream.Error, until time.Time, sent, rcpts int) {
	Failure(l.Error(), e).Time(KeyNextRetry, until).Int(KeySentToday, sent).Int(KeyRcptsToday, rcpts).Msg(EvHeld)
}

// Unreachable: no working server; a probe watches every probeEvery.
func Unreachable(l zerolog.Logger, e *upstream.Error, probeEvery time.Duration) {
	Failure(l.Warn(), e).Int64(KeyProbeEveryMS, probeEvery.Milliseconds()).Msg(EvUnreachable)
}

// Resumed: the upstream answers again; queued messages go now.
func Resumed(l zerolog.Logger, queued int) {
	l.Info().Int(KeyQueued, queued).Msg(EvResumed)
}

// PortSwitched: the first port failed (e) and port worked.
func PortSwitched(l zerolog.Logger, e *upstream.Error, port int) {
	ev := l.Warn().Str(KeyStage, string(e.Stage)).Str(KeyClass, string(e.Class)).Int(KeyFailedPort, e.Port).Int(KeyPort, port).Str(KeyError, e.Text)
	ev.Str(KeyRemedy, "Port "+strconv.Itoa(e.Port)+" does not work from this network ("+e.Text+"), so the relay sends through port "+strconv.Itoa(port)+" and keeps using it: nothing to do. To spare the check now and then, allow outgoing TCP "+strconv.Itoa(e.Port)+" in the firewall, or ask the network's owner.").
		Msg(EvPortSwitched)
}
