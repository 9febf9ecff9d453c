package sendmail

import (
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/rs/zerolog"

	"github.com/icloud-relay/icloud-relay/config"
	"github.com/icloud-relay/icloud-relay/relay"
	"github.com/icloud-relay/icloud-relay/relay/queue"
)

// Result tells how a submission ended.
type Result struct {
	QueuedOffline string // the queue ID when the relay was not running
	Reply         string // the relay's reply otherwise
}

// Error is a failed submission with the sendmail exit code to use.
type Error struct {
	Exit int
	Err  error
}

func (e *Error) Error() string { return e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// Submit hands m to the relay listening per cfg, or, when nothing listens
// there, takes it into the queue itself through the relay's intake, with
// the same rules as the listener (the sender policy, the header fix-ups),
// for the relay to send when it starts.
func Submit(cfg *config.Config, rules relay.IntakeConfig, m *Message) (*Result, error) {
	reply, err := viaSMTP(cfg, m)
	if err == nil {
		return &Result{Reply: reply}, nil
	}
	var se *smtp.SMTPError
	switch {
	case errors.As(err, &se) && se.Code >= 500:
		return nil, &Error{Exit: ExitUnavailable, Err: fmt.Errorf("the relay refused the message: %w", err)}
	case errors.As(err, &se):
		return nil, &Error{Exit: ExitTempFail, Err: fmt.Errorf("the relay could not take the message now: %w", err)}
	case !errors.Is(err, errNotStarted):
		return nil, &Error{Exit: ExitTempFail, Err: fmt.Errorf("talking to the relay at %s: %w", cfg.Listen.Addr, err)}
	}
	// Nobody listens: queue it ourselves.
	q, err := queue.Open(cfg.Queue.Dir)
	if err != nil {
		return nil, &Error{Exit: ExitTempFail, Err: fmt.Errorf("the relay is not running and the queue cannot be opened: %w", err)}
	}
	release, err := q.Lock()
	if err != nil {
		return nil, &Error{Exit: ExitTempFail, Err: fmt.Errorf("the relay holds the queue but does not accept connections on %s: %w", cfg.Listen.Addr, err)}
	}
	defer release()
	// As the listener would: a local client, on this machine.
	in := relay.NewIntake(q, rules, zerolog.Nop())
	qm, st, err := in.Stage(relay.Envelope{From: m.From, Rcpts: m.Rcpts, Helo: "localhost", Client: "127.0.0.1"}, m.Data)
	if err == nil {
		err = q.Commit(st, qm)
	}
	var refusal *smtp.SMTPError
	var le *relay.LineError
	switch {
	case err == nil:
		return &Result{QueuedOffline: qm.ID}, nil
	case errors.As(err, &refusal):
		return nil, &Error{Exit: ExitUnavailable, Err: fmt.Errorf("refused: %s", refusal.Message)}
	case errors.Is(err, smtp.ErrDataTooLarge):
		return nil, &Error{Exit: ExitDataErr, Err: fmt.Errorf("the message is larger than this relay accepts (%d bytes)", in.Limit())}
	case errors.As(err, &le):
		return nil, &Error{Exit: ExitDataErr, Err: le}
	}
	return nil, &Error{Exit: ExitTempFail, Err: fmt.Errorf("the relay is not running and the message could not be queued: %w", err)}
}

// errNotStarted: the listener could not be reached. The queue lock then
// tells whether a relay runs at all.
var errNotStarted = errors.New("cannot reach the relay")

func viaSMTP(cfg *config.Config, m *Message) (string, error) {
	conn, err := net.DialTimeout("tcp", listenAddr(cfg), 5*time.Second)
	if err != nil {
		return "", fmt.Errorf("%w: %w", errNotStarted, err)
	}
	c := smtp.NewClient(conn)
	defer c.Close()
	c.CommandTimeout = time.Minute
	if err := c.Hello("localhost"); err != nil {
		return "", err
	}
	if len(cfg.Listen.Users) > 0 {
		u := cfg.Listen.Users[0]
		if err := c.Auth(sasl.NewPlainClient("", u.Username, u.Password.Reveal())); err != nil {
			return "", err
		}
	}
	if err := c.Mail(m.From, nil); err != nil {
		return "", err
	}
	for _, r := range m.Rcpts {
		if err := c.Rcpt(r, nil); err != nil {
			return "", err
		}
	}
	w, err := c.Data()
	if err != nil {
		return "", err
	}
	if _, err := io.Copy(w, m.Data); err != nil {
		return "", err
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return "", err
	}
	c.Quit()
	return resp.StatusText, nil
}
