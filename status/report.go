// Package status answers "can mail flow?" for people who do not read logs:
// a report built from the scheduler's health (Build), served on a local
// web page with the queue, the last events and the checks, as JSON for
// "icloud-relay status", and as Prometheus metrics (Server).
//
// Invariants: the page and every reply are made from data, never from
// HTML built out of message-derived strings (the page's script sets
// text, not markup); nothing here holds or shows a secret but the
// per-install token, which only the page's own origin can read; every
// change goes through the scheduler, as the queue commands do.
package status

import (
	"bufio"
	"fmt"
	"mime"
	"net/textproto"
	"strings"
	"time"

	"github.com/icloud-relay/icloud-relay/relay"
	"github.com/icloud-relay/icloud-relay/relay/queue"
	"github.com/icloud-relay/icloud-relay/upstream"
)

// States of the banner.
const (
	StateOK          = "ok"          // mail flows (or nothing has needed sending)
	StateRetrying    = "retrying"    // attempts fail for now; each message is tried again
	StateUnreachable = "unreachable" // nothing answers: messages wait for a probe to see it
	StatePaused      = "paused"      // the login was refused: every delivery waits
	StateThrottled   = "throttled"   // logins refused for now
	StateHeld        = "held"        // the daily limit: every delivery waits for the day to roll over
)

// Report is the relay's state in words: the page, "status" and "status
// --json" show it.
type Report struct {
	Version  string `json:"version"`
	URL      string `json:"url,omitempty"` // the status page
	OK       bool   `json:"ok"`            // mail can flow
	State    string `json:"state"`
	Headline string `json:"headline"`
	// Why mail cannot flow, when it cannot: the failure's stage and class,
	// what the server said, and what to do.
	Stage  string     `json:"stage,omitempty"`
	Class  string     `json:"class,omitempty"`
	Error  string     `json:"error,omitempty"`
	Remedy string     `json:"remedy,omitempty"`
	Since  *time.Time `json:"since,omitempty"`
	Doing  string     `json:"doing,omitempty"` // what the relay does about it
	Until  *time.Time `json:"until,omitempty"`

	Port         int        `json:"port"` // the port the next delivery tries first
	PortNote     string     `json:"port_note,omitempty"`
	LastDelivery *time.Time `json:"last_delivery,omitempty"`
	LastFailure  *Failure   `json:"last_failure,omitempty"`

	SentToday       int `json:"sent_today"`
	RecipientsToday int `json:"recipients_today"`
	DailyLimit      int `json:"daily_limit"`

	Queued        int    `json:"queued"`
	FailedCount   int    `json:"failed"`
	OldestSeconds int64  `json:"oldest_seconds,omitempty"` // the oldest waiting message's age
	Queue         []Item `json:"queue"`
	FailedItems   []Item `json:"failed_items"`
}

// Failure is one failed attempt.
type Failure struct {
	At     time.Time `json:"at"`
	Stage  string    `json:"stage"`
	Class  string    `json:"class,omitempty"`
	Error  string    `json:"error"`
	Remedy string    `json:"remedy,omitempty"`
}

// Item is a queued or failed message.
type Item struct {
	ID          string     `json:"id"`
	Received    time.Time  `json:"received"`
	From        string     `json:"from"`
	To          []string   `json:"to"`
	Subject     string     `json:"subject"`
	Attempts    int        `json:"attempts"`
	LastFailure *Failure   `json:"last_failure,omitempty"`
	NextTry     *time.Time `json:"next_try,omitempty"` // queued only
}

// maxItems bounds each list on the page; the counts are always whole.
const maxItems = 200

// Input is what Build reads.
type Input struct {
	Version  string
	Health   relay.Health
	Port     int // the port the next delivery tries first
	Ports    [2]int
	Fallback time.Time // when the client fell back to the TLS port (zero: it did not)
	Queue    *queue.Queue
	Now      time.Time
	// Summary leaves the message lists out (their counts stay): what
	// "status" and /metrics need, without reading every message's header.
	Summary bool
}

// Build makes the report.
func Build(in Input) Report {
	h := in.Health
	r := Report{Version: in.Version, Port: in.Port, SentToday: h.SentToday, RecipientsToday: h.RecipientsToday, DailyLimit: h.DailyLimit}
	if in.Port == in.Ports[1] && !in.Fallback.IsZero() {
		r.PortNote = fmt.Sprintf("%d, because %d did not work (since %s)", in.Ports[1], in.Ports[0], in.Fallback.Local().Format(time.Kitchen))
	}
	if !h.LastDelivery.IsZero() {
		r.LastDelivery = timePtr(h.LastDelivery)
	}
	if e := h.LastError; e != nil {
		r.LastFailure = &Failure{At: h.LastErrorAt, Stage: string(e.Stage), Class: string(e.Class), Error: e.Error(), Remedy: e.Remedy}
	}
	r.banner(h, in.Now)
	if in.Queue != nil {
		r.lists(in.Queue, h, in.Now, !in.Summary)
	}
	return r
}

func (r *Report) banner(h relay.Health, now time.Time) {
	r.OK, r.State = true, StateOK
	r.Headline = "Mail is flowing."
	if h.LastDelivery.IsZero() {
		r.Headline = "Ready: nothing has needed sending yet."
	}
	state, headline := "", ""
	switch h.Hold {
	case upstream.Unreachable:
		state, headline = StateUnreachable, "Mail cannot flow: iCloud cannot be reached from this machine."
		r.Doing = "Messages wait without using up their retries; a probe checks every few seconds and sends them all as soon as iCloud answers."
	case upstream.PauseAccount:
		state, headline = StatePaused, "Mail cannot flow: iCloud refused the login."
		r.Doing = "Every delivery is paused until " + clock(h.HoldUntil, now) + ", so as not to lock the account; messages stay queued. Retry tries at once."
	case upstream.Throttled:
		state, headline = StateThrottled, "Mail waits: iCloud refuses logins for now."
		r.Doing = "Every delivery waits until " + clock(h.HoldUntil, now) + "; messages stay queued."
	case upstream.HoldDailyLimit:
		state, headline = StateHeld, "Mail waits: iCloud's daily sending limit is reached."
		r.Doing = "Deliveries are held until the limit rolls over at " + clock(h.HoldUntil, now) + "; messages stay queued."
	default:
		if h.Failing.IsZero() || h.Queued == 0 {
			return
		}
		state, headline = StateRetrying, "Mail is not going out: deliveries fail for now."
		if !h.NextTry.IsZero() {
			r.Doing = "Each message is tried again; the next try is at " + clock(h.NextTry, now) + "."
		}
	}
	r.OK, r.State, r.Headline = false, state, headline
	if !h.HoldUntil.IsZero() {
		r.Until = timePtr(h.HoldUntil)
	}
	if !h.Failing.IsZero() {
		r.Since = timePtr(h.Failing)
	}
	if e := h.LastError; e != nil {
		r.Stage, r.Class, r.Error, r.Remedy = string(e.Stage), string(e.Class), e.Error(), e.Remedy
	}
}

func (r *Report) lists(q *queue.Queue, h relay.Health, now time.Time, items bool) {
	active, _ := q.Active()
	failed, _ := q.Failed()
	r.Queued, r.FailedCount = len(active), len(failed)
	if len(active) > 0 {
		r.OldestSeconds = int64(now.Sub(active[0].Received).Seconds())
	}
	if !items {
		return
	}
	r.Queue, r.FailedItems = []Item{}, []Item{}
	for i, m := range active {
		if i == maxItems {
			break
		}
		it := item(q, m)
		next := m.NextAttempt
		if h.Hold != "" && h.HoldUntil.After(next) {
			next = h.HoldUntil
		}
		it.NextTry = &next
		r.Queue = append(r.Queue, it)
	}
	for i := len(failed) - 1; i >= 0 && len(r.FailedItems) < maxItems; i-- { // newest first
		r.FailedItems = append(r.FailedItems, item(q, failed[i]))
	}
}

func item(q *queue.Queue, m *queue.Message) Item {
	it := Item{ID: m.ID, Received: m.Received, From: m.From, Attempts: m.Attempts, To: []string{}}
	for _, rc := range m.Rcpts {
		it.To = append(it.To, rc.Addr)
	}
	last := m.Final
	if last == nil {
		last = m.LastError()
	}
	if last != nil && last.Stage != "" {
		text := last.Text
		if last.Code != 0 {
			text = strings.TrimSpace(fmt.Sprintf("%d %s %s", last.Code, last.EnhancedCode, last.Text))
		}
		it.LastFailure = &Failure{At: last.Time, Stage: last.Stage, Class: last.Class, Error: text, Remedy: last.Remedy}
	}
	if hdr, err := q.Headers(m.ID); err == nil {
		it.Subject = subject(hdr)
	}
	return it
}

// subject is the decoded Subject of a header block ("" when none).
func subject(hdr string) string {
	h, err := textproto.NewReader(bufio.NewReader(strings.NewReader(hdr + "\r\n\r\n"))).ReadMIMEHeader()
	if err != nil && len(h) == 0 {
		return ""
	}
	s := h.Get("Subject")
	if d, err := new(mime.WordDecoder).DecodeHeader(s); err == nil {
		s = d
	}
	return s
}

// clock is t as a person reads it: the time of day when it is today,
// else the date too.
func clock(t, now time.Time) string {
	if t.IsZero() {
		return "later"
	}
	t = t.Local()
	y1, m1, d1 := t.Date()
	y2, m2, d2 := now.Local().Date()
	if y1 == y2 && m1 == m2 && d1 == d2 {
		return t.Format("15:04:05")
	}
	return t.Format("Mon 2 Jan 15:04")
}

func timePtr(t time.Time) *time.Time { return &t }
