package relay

import (
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/rs/zerolog"

	"github.com/icloud-relay/icloud-relay/logging"
	"github.com/icloud-relay/icloud-relay/relay/queue"
)

// Intake is the one way into the queue. Every door — the SMTP listener,
// sendmail while no relay runs, the relay's own failure notices — turns an
// envelope and a message's content into a staged message here, with one
// set of rules applied in one order:
//
//  1. the sender policy on the envelope sender (sender.rewrite, aliases,
//     the empty sender);
//  2. the size limit, while the content is read (and again if re-encoding
//     grows it);
//  3. the header fix-ups: a Received trace header, Date and Message-ID
//     when missing, a From iCloud accepts (sender.rewrite = header), bare
//     LF turned into CRLF;
//  4. long lines re-encoded (longlines.go);
//  5. staged on disk (queue.Stage). The door owns it until it settles
//     it: it commits it (queue.Commit), or hands it to the scheduler for a
//     first attempt and settles it afterwards (Scheduler.Settle).
//
// So the same input queues the same bytes and envelope whatever the door.
type Intake struct {
	q   *queue.Queue
	cfg IntakeConfig
	log zerolog.Logger

	pool sync.Pool // *intakeBuffers
}

// IntakeConfig is what the intake's rules need from the config.
type IntakeConfig struct {
	Hostname       string // this relay's name, in the Received header
	MaxMessageSize int64  // the limit as the config gives it
	Sender         SenderPolicy
	ReceivedHeader bool
}

// NewIntake returns the intake into q; log takes its events (accepted,
// sender rewritten …).
func NewIntake(q *queue.Queue, cfg IntakeConfig, log zerolog.Logger) *Intake {
	// Keep room for the headers the relay adds, so that what it accepts is
	// never too large upstream (tiny test limits are taken as they are).
	if cfg.MaxMessageSize > 4*headerReserve {
		cfg.MaxMessageSize -= headerReserve
	}
	in := &Intake{q: q, cfg: cfg, log: log}
	in.pool.New = func() any { return newIntakeBuffers() }
	return in
}

// Limit is the largest message the intake takes.
func (in *Intake) Limit() int64 { return in.cfg.MaxMessageSize }

// Envelope is a message's envelope as a door received it.
type Envelope struct {
	From   string // the envelope sender as given (MAIL FROM, sendmail -f)
	Rcpts  []string
	UTF8   bool   // SMTPUTF8 was asked for
	Helo   string // the client's name, for the Received header
	Client string // the client's address, likewise
	Notice bool   // a failure notice made by the relay itself
}

// Sender applies the sender policy: the envelope sender to use upstream,
// or the permanent refusal for the client.
func (in *Intake) Sender(from string) (string, *smtp.SMTPError) {
	return in.cfg.Sender.envelopeSender(from)
}

// Stage takes a message: it applies the rules to env and the content read
// from r, and stages the result. The errors tell the door what to answer:
// an *smtp.SMTPError (the sender refused), a *clientError (reading r
// failed; smtp.ErrDataTooLarge inside when it was too large), a
// *LineError, a *lineGrowthError, or a queue error.
func (in *Intake) Stage(env Envelope, r io.Reader) (*queue.Message, *queue.Staged, error) {
	from, refusal := in.Sender(env.From)
	if refusal != nil {
		return nil, nil, refusal
	}
	now := time.Now()
	m := &queue.Message{ID: queue.NewID(now), From: from, UTF8: env.UTF8, Notice: env.Notice}
	for _, to := range env.Rcpts {
		m.Rcpts = append(m.Rcpts, queue.Recipient{Addr: to, Status: queue.Pending})
	}
	cr := &clientReader{r: r, limit: in.cfg.MaxMessageSize}
	bufs := in.pool.Get().(*intakeBuffers)
	fixed, ed, err := fixMessage(bufs, cr, intake{id: m.ID, helo: env.Helo, client: env.Client, by: in.cfg.Hostname,
		received: in.cfg.ReceivedHeader, policy: in.cfg.Sender, now: now})
	var st *queue.Staged
	if err == nil {
		st, err = in.q.Stage(m, fixed)
	}
	longest := bufs.crlf.longestLine()
	bufs.in.Reset(nil) // hold no reference to this client while pooled
	in.pool.Put(bufs)
	if err == nil && longest > maxLineLength {
		if err = in.q.Rewrite(st, m, reencodeLongLines); err != nil {
			in.q.Discard(st)
		} else if m.Size > in.cfg.MaxMessageSize+headerReserve {
			in.q.Discard(st)
			err = &lineGrowthError{size: m.Size}
		}
	}
	if err != nil {
		return nil, nil, err
	}
	m.EightBit = cr.eightBit // known once the data is read
	m.MessageID = ed.messageID
	logging.Accepted(in.log, m, env.Client)
	if env.From != m.From {
		logging.EnvelopeRewritten(in.log, m, env.From)
	}
	if ed.fromRewritten != "" {
		logging.FromRewritten(in.log, m, ed.fromRewritten, in.cfg.Sender.Address)
	}
	if ed.signedKept {
		in.log.Warn().Str(logging.KeyQueueID, m.ID).Str(logging.KeyStage, "accept").Str(logging.KeyRemedy, "The message is DKIM-signed, so its From was left alone; iCloud may refuse it. Send from your iCloud address.").Msg("From header not rewritten: signed message")
	}
	return m, st, nil
}

// lineGrowthError: re-encoding long lines made a message too large.
type lineGrowthError struct{ size int64 }

func (e *lineGrowthError) Error() string {
	return fmt.Sprintf("re-encoded message is %d bytes, too large", e.size)
}
