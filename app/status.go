package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"time"

	"github.com/icloud-relay/icloud-relay/internal/buildinfo"
	"github.com/icloud-relay/icloud-relay/logging"
	"github.com/icloud-relay/icloud-relay/relay"
	"github.com/icloud-relay/icloud-relay/sendmail"
	"github.com/icloud-relay/icloud-relay/status"
)

// Report is the relay's state in words, with the queued and failed
// messages: what the status page shows.
func (a *App) Report() status.Report { return a.report(a.sched.Health(), false) }

// report builds the report from h; summary leaves the message lists out
// ("status" and /metrics need only their counts).
func (a *App) report(h relay.Health, summary bool) status.Report {
	u := a.cfg.Upstream
	r := status.Build(status.Input{Version: buildinfo.Get().Short(), Health: h, Port: a.up.Preferred(),
		Ports: [2]int{u.StartTLSPort, u.TLSPort}, Fallback: a.up.PortMemory().Since, Queue: a.q, Now: time.Now(), Summary: summary})
	if a.page != nil {
		r.URL = a.page.URL()
	}
	return r
}

// startPage opens the status page. A page that cannot listen is logged and
// left out: mail matters more than the page.
func (a *App) startPage() {
	addr := a.cfg.Status.Addr
	if addr == "" {
		return
	}
	tok, err := status.LoadToken(a.cfg.Queue.Dir)
	if err == nil {
		a.page, err = status.Serve(addr, tok, source{a}, a.log)
	}
	if err != nil {
		remedy := "Set [status] addr to another loopback port, or to \"\" to turn the page off."
		if errors.Is(err, syscall.EADDRINUSE) || strings.Contains(err.Error(), "address already in use") || strings.Contains(err.Error(), "Only one usage") {
			remedy = fmt.Sprintf("Another program (or another icloud-relay) uses %s: stop it, or set [status] addr to another loopback port (\"\" turns the page off).", addr)
		}
		a.log.Warn().Err(err).Str(logging.KeyStage, "status").Str("addr", addr).Str(logging.KeyRemedy, remedy).Msg(logging.EvStatusUnavailable)
		return
	}
	a.log.Info().Str("url", a.page.URL()).Msg(logging.EvStatusPage)
}

// source is the App as the status page uses it.
type source struct{ a *App }

func (s source) Report() status.Report { return s.a.Report() }

func (s source) Metrics() status.Sample {
	h := s.a.sched.Health()
	return status.Sample{Health: h, Upstream: s.a.up.Stats(), Report: s.a.report(h, true)}
}

func (s source) Events() []json.RawMessage {
	if s.a.events == nil {
		return []json.RawMessage{}
	}
	return s.a.events.Lines()
}

func (s source) Retry(id string) error   { return s.a.sched.Retry(id) }
func (s source) RetryAll() int           { return s.a.sched.RetryAll() }
func (s source) Delete(id string) error  { return s.a.sched.Delete(id) }
func (s source) Requeue(id string) error { return s.a.sched.Requeue(id) }

func (s source) Check(ctx context.Context, begin func(string), done func(any)) bool {
	if s.a.checks == nil {
		done(map[string]string{"name": "checks", "status": "skip", "detail": "this relay was started without its checklist"})
		return false
	}
	return s.a.checks(ctx, s.a.cfg, begin, done)
}

// SendTest sends a short message to the account's own address through the
// relay's listener, as any local client would.
func (s source) SendTest(ctx context.Context) (string, error) {
	cfg := s.a.cfg
	to := cfg.Sender.Address
	now := time.Now()
	body := fmt.Sprintf("From: icloud-relay <%s>\r\nTo: <%s>\r\nSubject: icloud-relay test message\r\nDate: %s\r\n\r\n"+
		"This message was sent from the icloud-relay status page on %s to check that mail reaches iCloud.\r\n",
		to, to, now.Format(time.RFC1123Z), now.Format("Mon 2 Jan 2006 15:04:05"))
	res, err := sendmail.Submit(cfg, IntakeConfig(cfg), &sendmail.Message{From: to, Rcpts: []string{to}, Data: strings.NewReader(body)})
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("Test message sent to %s; the relay said: %s", to, res.Reply), nil
}

// controlOps is the scheduler as the control API drives it, with the
// status summary.
type controlOps struct {
	*relay.Scheduler
	a *App
}

func (c controlOps) Status() json.RawMessage {
	b, _ := json.Marshal(c.a.report(c.a.sched.Health(), true)) // the lists are the page's
	return b
}
