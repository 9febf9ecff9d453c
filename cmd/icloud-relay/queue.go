package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/icloud-relay/icloud-relay/relay/control"
	"github.com/icloud-relay/icloud-relay/relay/queue"
	"github.com/icloud-relay/icloud-relay/upstream"
)

const queueUsage = `Usage: icloud-relay queue SUBCOMMAND [--config FILE] [--json] [ID]

  list           messages waiting for delivery, with their last failure
  show ID        one message: envelope, headers, attempt history
  retry ID       deliver now (retry --all: every queued message)
  delete ID      remove a message (queued or failed) for good
  failed         the failed area, with the final reasons
  requeue ID     move a failed message back into the queue

Safe while the relay runs: changes go through the running relay.`

func queueCmd(args []string) int {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		fmt.Fprintln(os.Stderr, queueUsage)
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "-help") {
			return exitOK
		}
		return exitUsage
	}
	sub := args[0]
	fs := flag.NewFlagSet("queue "+sub, flag.ContinueOnError)
	cfgPath := configFlag(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	all := false
	if sub == "retry" {
		fs.BoolVar(&all, "all", false, "retry every queued message")
	}
	fs.Usage = func() { fmt.Fprintln(os.Stderr, queueUsage); fs.PrintDefaults() }
	// Flags may come before or after the ID.
	var ids []string
	rest := args[1:]
	for {
		if err := fs.Parse(rest); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return exitOK
			}
			return exitUsage
		}
		if fs.NArg() == 0 {
			break
		}
		ids = append(ids, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	needID := map[string]bool{"show": true, "retry": !all, "delete": true, "requeue": true}[sub]
	if _, known := map[string]bool{"list": true, "show": true, "retry": true, "delete": true, "failed": true, "requeue": true}[sub]; !known {
		fmt.Fprintf(os.Stderr, "icloud-relay queue: unknown subcommand %q\n\n%s\n", sub, queueUsage)
		return exitUsage
	}
	if needID != (len(ids) == 1) || len(ids) > 1 {
		fmt.Fprintf(os.Stderr, "icloud-relay queue %s: %s\n", sub, map[bool]string{true: "needs exactly one message ID", false: "takes no message ID"}[needID])
		return exitUsage
	}
	cfg, ok := loadLocalConfig(*cfgPath)
	if !ok {
		return exitUsage
	}
	q, err := control.Open(cfg.Queue.Dir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "icloud-relay queue: %v\n", err)
		return exitFailure
	}
	defer q.Close()
	out := &output{w: os.Stdout, json: *asJSON}
	switch sub {
	case "list":
		err = listQueue(q, out)
	case "failed":
		err = listFailed(q, out)
	case "show":
		err = showMessage(q, ids[0], out)
	case "retry":
		if all {
			var n int
			n, err = q.RetryAll()
			out.result(map[string]any{"retried": n}, fmt.Sprintf("%d queued messages will be tried now", n))
		} else if err = q.Retry(ids[0]); err == nil {
			out.result(map[string]any{"retried": ids[0]}, ids[0]+" will be tried now")
		}
	case "delete":
		if err = q.Delete(ids[0]); err == nil {
			out.result(map[string]any{"deleted": ids[0]}, ids[0]+" deleted")
		}
	case "requeue":
		if err = q.Requeue(ids[0]); err == nil {
			out.result(map[string]any{"requeued": ids[0]}, ids[0]+" is back in the queue and will be tried now")
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "icloud-relay queue %s: %v\n", sub, err)
		if errors.Is(err, queue.ErrNotFound) {
			return exitUsage
		}
		return exitFailure
	}
	return exitOK
}

type output struct {
	w    io.Writer
	json bool
}

func (o *output) result(v any, text string) {
	if o.json {
		o.encode(v)
		return
	}
	fmt.Fprintln(o.w, text)
}

func (o *output) encode(v any) {
	enc := json.NewEncoder(o.w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// entry is a message as the queue commands print it.
type entry struct {
	ID        string            `json:"id"`
	Received  time.Time         `json:"received"`
	AgeSecs   int64             `json:"age_seconds"`
	From      string            `json:"from"`
	Rcpts     []queue.Recipient `json:"rcpts"`
	Size      int64             `json:"size"`
	Attempts  int               `json:"attempts"`
	LastError *queue.Outcome    `json:"last_error,omitempty"`
	NextRetry *time.Time        `json:"next_retry,omitempty"`
	HeldBy    string            `json:"held_by,omitempty"` // the class holding every delivery (upstream.Class)
	Final     *queue.Outcome    `json:"final,omitempty"`
	Headers   string            `json:"headers,omitempty"`
	History   []queue.Outcome   `json:"history,omitempty"`
}

func toEntry(m *queue.Message, active bool) entry {
	e := entry{ID: m.ID, Received: m.Received, AgeSecs: int64(time.Since(m.Received).Seconds()), From: m.From,
		Rcpts: m.Rcpts, Size: m.Size, Attempts: m.Attempts, LastError: m.LastError(), Final: m.Final}
	if e.LastError != nil && e.LastError.Stage == "" {
		e.LastError = nil // the last attempt delivered to some recipients
	}
	if active {
		next := m.NextAttempt
		e.NextRetry = &next
	}
	return e
}

// listing turns msgs into entries and prints them as JSON, or says empty
// when there are none; it returns the entries still to print as text.
func (o *output) listing(msgs []*queue.Message, active bool, empty string, adjust func(*entry)) []entry {
	entries := []entry{}
	for _, m := range msgs {
		e := toEntry(m, active)
		if adjust != nil {
			adjust(&e)
		}
		entries = append(entries, e)
	}
	switch {
	case o.json:
		o.encode(entries)
		return nil
	case len(entries) == 0:
		fmt.Fprintln(o.w, empty)
	}
	return entries
}

func listQueue(q *control.Queue, o *output) error {
	msgs, err := q.Active()
	if err != nil {
		return err
	}
	// While the relay holds every delivery (a refused login, the daily
	// limit, no server), the next try is not the message's own.
	class, until, err := q.Hold()
	if err != nil {
		return err
	}
	entries := o.listing(msgs, true, "The queue is empty.", func(e *entry) {
		if e.NextRetry != nil && class != "" {
			e.HeldBy = string(class)
			if until.After(*e.NextRetry) {
				e.NextRetry = &until
			}
		}
	})
	if len(entries) == 0 {
		return nil
	}
	tw := tabwriter.NewWriter(o.w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tAGE\tFROM\tTO\tSIZE\tTRIES\tLAST FAILURE\tNEXT TRY")
	for _, e := range entries {
		last := "-"
		if e.LastError != nil {
			last = fmt.Sprintf("%s: %s", e.LastError.Stage, truncate(e.LastError.Text, 60))
		}
		next := "now"
		if d := time.Until(*e.NextRetry); d > 0 {
			next = "in " + d.Round(time.Second).String()
		}
		if e.HeldBy != "" {
			next = heldText(upstream.Class(e.HeldBy), next)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", e.ID, age(e.Received), e.From, rcptList(e.Rcpts, queue.Pending), size(e.Size), e.Attempts, last, next)
	}
	return tw.Flush()
}

func listFailed(q *control.Queue, o *output) error {
	msgs, err := q.Failed()
	if err != nil {
		return err
	}
	for _, e := range o.listing(msgs, false, "No failed messages.", nil) {
		fmt.Fprintf(o.w, "%s  from %s to %s, %s, %d attempts\n", e.ID, e.From, rcptList(e.Rcpts, queue.Failed), size(e.Size), e.Attempts)
		if f := e.Final; f != nil {
			fmt.Fprintf(o.w, "  failed %s at %s: %s\n", f.Time.Local().Format(time.DateTime), describeStage(f), f.Text)
			if f.Remedy != "" {
				fmt.Fprintf(o.w, "  → %s\n", f.Remedy)
			}
		}
	}
	return nil
}

func showMessage(q *control.Queue, id string, o *output) error {
	m, err := q.Get(id)
	active := err == nil
	if errors.Is(err, queue.ErrNotFound) {
		m, err = q.GetFailed(id)
	}
	if err != nil {
		return err
	}
	e := toEntry(m, active)
	e.History = m.History
	e.Headers, _ = q.Headers(id)
	if o.json {
		o.encode(e)
		return nil
	}
	state := "queued"
	if !active {
		state = "failed"
	}
	fmt.Fprintf(o.w, "Message %s (%s)\n  received %s (%s ago), %s, %d attempts\n  from     %s\n",
		e.ID, state, e.Received.Local().Format(time.DateTime), age(e.Received), size(e.Size), e.Attempts, e.From)
	for _, r := range e.Rcpts {
		fmt.Fprintf(o.w, "  to       %s (%s)", r.Addr, r.Status)
		if r.Error != nil && r.Status != queue.Delivered {
			fmt.Fprintf(o.w, ": %s: %s", describeStage(r.Error), r.Error.Text)
		}
		fmt.Fprintln(o.w)
	}
	if e.NextRetry != nil {
		fmt.Fprintf(o.w, "  next try %s\n", e.NextRetry.Local().Format(time.DateTime))
	}
	if e.Final != nil {
		fmt.Fprintf(o.w, "  failed:  %s: %s\n", describeStage(e.Final), e.Final.Text)
	}
	fmt.Fprintf(o.w, "\nHeaders:\n%s", indent(e.Headers))
	fmt.Fprintln(o.w, "\nAttempts:")
	if len(e.History) == 0 {
		fmt.Fprintln(o.w, "  none yet")
	}
	for _, h := range e.History {
		what := "delivered"
		if h.Stage != "" {
			what = describeStage(&h) + ": " + h.Text
		}
		fmt.Fprintf(o.w, "  %s  port %d  %s\n", h.Time.Local().Format(time.DateTime), h.Port, what)
		if h.Remedy != "" && h.Stage != "" {
			fmt.Fprintf(o.w, "      → %s\n", h.Remedy)
		}
	}
	return nil
}

// heldText is the next try of a message held with every other one.
func heldText(c upstream.Class, next string) string {
	switch c {
	case upstream.Unreachable:
		return "when the server answers"
	case upstream.PauseAccount:
		return "held (login refused), " + next
	case upstream.Throttled:
		return "held (logins refused for now), " + next
	case upstream.HoldDailyLimit:
		return "held (daily limit), " + next
	}
	return next
}

// describeStage names where an attempt failed and, when the record has
// it, its class and what that meant.
func describeStage(o *queue.Outcome) string {
	s := o.Stage
	if o.Code != 0 {
		s += fmt.Sprintf(" (%d %s)", o.Code, o.EnhancedCode)
	}
	if c := upstream.Class(o.Class); c != "" {
		s += fmt.Sprintf(" [%s: %s]", c, c.Meaning())
	}
	return s
}

func rcptList(rs []queue.Recipient, st queue.Status) string {
	var out []string
	for _, r := range rs {
		if r.Status == st {
			out = append(out, r.Addr)
		}
	}
	if len(out) > 2 {
		return fmt.Sprintf("%s +%d more", strings.Join(out[:2], ","), len(out)-2)
	}
	return strings.Join(out, ",")
}

func age(t time.Time) string {
	d := time.Since(t)
	switch {
	case d < time.Minute:
		return d.Round(time.Second).String()
	case d < 48*time.Hour:
		return d.Round(time.Minute).String()
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

func size(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "…"
}

func indent(s string) string {
	if s == "" {
		return "  (none)\n"
	}
	return "  " + strings.ReplaceAll(strings.TrimRight(s, "\r\n"), "\n", "\n  ") + "\n"
}
