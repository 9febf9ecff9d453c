package app_test

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/icloud-relay/icloud-relay/app"
	"github.com/icloud-relay/icloud-relay/config"
	"github.com/icloud-relay/icloud-relay/internal/logcheck"
	"github.com/icloud-relay/icloud-relay/internal/testenv"
	"github.com/icloud-relay/icloud-relay/logging"
	"github.com/icloud-relay/icloud-relay/relay/queue"
	"github.com/icloud-relay/icloud-relay/upstream/upstreamtest"
)

// syncBuffer collects log output from many goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// lines returns the JSON log lines whose fields include all of want.
func (b *syncBuffer) lines(want map[string]any) []map[string]any {
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(b.String()))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) != nil {
			continue
		}
		ok := true
		for k, v := range want {
			if fmt.Sprint(m[k]) != fmt.Sprint(v) {
				ok = false
			}
		}
		if ok {
			out = append(out, m)
		}
	}
	return out
}

type env struct {
	t       *testing.T
	standin *upstreamtest.Server
	cfg     *config.Config
	app     *app.App
	logs    *syncBuffer
	dir     string
}

const testPassword = "wxyz-secr-etpw-0042"

// newEnv starts a stand-in and a relay configured through a real config
// file. extra is appended to the config's [delivery] section, and may open
// further sections.
func newEnv(t *testing.T, extra string) *env {
	t.Helper()
	return newEnvWith(t, upstreamtest.Options{}, extra)
}

// newEnvWith is newEnv with stand-in options (the password is always testPassword).
func newEnvWith(t *testing.T, opts upstreamtest.Options, extra string) *env {
	t.Helper()
	opts.Password = testPassword
	if opts.Aliases == nil {
		opts.Aliases = []string{"alias@icloud.com"}
	}
	s, err := upstreamtest.Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	e := &env{t: t, standin: s, dir: t.TempDir(), logs: &syncBuffer{}}
	ca, err := s.WriteCA(e.dir)
	if err != nil {
		t.Fatal(err)
	}
	window := "sync_window = \"5s\"\n"
	if strings.Contains(extra, "sync_window") {
		window = ""
	}
	e.cfg = e.config(fmt.Sprintf(`
%shelo_name = "relay-test.example"
connect_timeout = "2s"
timeout = "2s"
[queue]
dir = %q
[log]
level = "debug"
[delivery]
retry_min = "200ms"
retry_max = "1s"
probe_interval = "100ms"
%s%s%s
`, s.UpstreamTOML("", ca), filepath.Join(e.dir, "queue"), window, extra, statusSection(extra)))
	e.start()
	t.Cleanup(func() {
		if strings.Contains(e.logs.String(), testPassword) {
			t.Errorf("the upstream password appears in the log")
		}
		for _, err := range logcheck.Lines(e.logs.String()) {
			t.Error(err)
		}
	})
	return e
}

func (e *env) config(text string) *config.Config {
	e.t.Helper()
	if !strings.Contains(text, "[listen]") {
		text = "[listen]\naddr = \"127.0.0.1:0\"\n" + text
	}
	path := filepath.Join(e.dir, "config.toml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		e.t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		e.t.Fatal(err)
	}
	return cfg
}

func (e *env) start() {
	e.t.Helper()
	red := e.cfg.Redactor()
	log, _, err := logging.New(logging.Options{Level: "debug", Format: "json", Redactor: red}, e.logs)
	if err != nil {
		e.t.Fatal(err)
	}
	a, err := app.New(e.cfg, log, red)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := a.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.app = a
	e.t.Cleanup(e.stop)
}

func (e *env) stop() {
	if e.app != nil {
		e.app.Stop(contextWithTimeout(10 * time.Second))
		e.app = nil
	}
}

func (e *env) addr() string { return e.app.Addr().String() }

func message(subject, body string) string {
	return "From: Demo <demo@icloud.com>\r\nTo: <friend@example.com>\r\nSubject: " + subject +
		"\r\nDate: Sun, 22 Nov 2026 01:00:00 +0000\r\nMessage-ID: <" + subject + "@test>\r\n\r\n" + body
}

// send submits with go-smtp's client and returns the final reply.
func send(addr, from string, to []string, data string) (string, error) {
	c, err := smtp.Dial(addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if err := c.Hello("client.test"); err != nil {
		return "", err
	}
	return sendOn(c, from, to, data)
}

func sendOn(c *smtp.Client, from string, to []string, data string) (string, error) {
	if err := c.Mail(from, nil); err != nil {
		return "", err
	}
	for _, r := range to {
		if err := c.Rcpt(r, nil); err != nil {
			return "", err
		}
	}
	w, err := c.Data()
	if err != nil {
		return "", err
	}
	io.WriteString(w, data)
	resp, err := w.CloseWithResponse()
	if err != nil {
		return "", err
	}
	return resp.StatusText, nil
}

func TestMessagesArriveByteForByte(t *testing.T) {
	e := newEnv(t, "")
	const clients, each = 6, 5
	var wg sync.WaitGroup
	sent := map[string]string{}
	var mu sync.Mutex
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			for i := 0; i < each; i++ {
				id := fmt.Sprintf("c%d-m%d", c, i)
				body := fmt.Sprintf("line one\r\n.leading dot must survive\r\n..two dots\r\n%s\r\n\r\nend %s\r\n", strings.Repeat("x", 990), id)
				data := message(id, body)
				mu.Lock()
				sent[id] = data
				mu.Unlock()
				if _, err := send(e.addr(), "demo@icloud.com", []string{"friend@example.com", "other@example.com"}, data); err != nil {
					t.Errorf("send %s: %v", id, err)
				}
			}
		}(c)
	}
	wg.Wait()
	got := e.standin.WaitMessages(clients*each, 30*time.Second)
	if len(got) != clients*each {
		t.Fatalf("stand-in got %d messages, want %d", len(got), clients*each)
	}
	seen := map[string]bool{}
	for _, m := range got {
		var id string
		for id = range sent {
			if strings.Contains(string(m.Data), "Subject: "+id+"\r\n") {
				break
			}
		}
		if seen[id] {
			t.Errorf("%s delivered twice", id)
		}
		seen[id] = true
		if upstreamtest.StripTrace(m.Data) != sent[id] {
			t.Errorf("%s changed in transit:\n got %q\nwant %q", id, m.Data, sent[id])
		}
		if m.From != "demo@icloud.com" || strings.Join(m.To, ",") != "friend@example.com,other@example.com" {
			t.Errorf("%s envelope %s -> %v", id, m.From, m.To)
		}
	}
	// Answered once on disk (bulk), a message may reach the stand-in a
	// moment before the relay has read the reply and logged it.
	waitFor(t, 10*time.Second, func() bool { return len(e.logs.lines(map[string]any{"message": "delivered"})) >= clients*each })
	if n := len(e.logs.lines(map[string]any{"message": "delivered"})); n != clients*each {
		t.Errorf("%d 'delivered' log lines, want %d", n, clients*each)
	}
	for _, h := range e.standin.HeloNames() {
		if h != "relay-test.example" {
			t.Fatalf("EHLO name %q, want the configured one", h)
		}
	}
}

func TestRealClients(t *testing.T) {
	e := newEnv(t, "")
	data := message("real-client", "Sent by an independent SMTP client.\r\n.dot\r\n")
	file := filepath.Join(e.dir, "msg.eml")
	os.WriteFile(file, []byte(data), 0o600)
	host, port, _ := net.SplitHostPort(e.addr())
	clients := map[string][]string{
		"python-smtplib": {"python3", "-c", `
import smtplib, sys
with open(sys.argv[3], "rb") as f: data = f.read()
with smtplib.SMTP(sys.argv[1], int(sys.argv[2]), local_hostname="py.test") as s:
    s.sendmail("demo@icloud.com", ["friend@example.com"], data)
`, host, port, file},
		"curl": {"curl", "-sS", "--url", "smtp://" + e.addr(), "--mail-from", "demo@icloud.com", "--mail-rcpt", "friend@example.com", "--upload-file", file},
	}
	n := 0
	for name, argv := range clients {
		t.Run(name, func(t *testing.T) {
			if _, err := exec.LookPath(argv[0]); err != nil {
				testenv.Skip(t, fmt.Sprintf("%s is not installed (.ci/run installs it): %v", argv[0], err))
			}
			out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
			if err != nil {
				t.Fatalf("%s: %v\n%s", name, err, out)
			}
			n++
			got := e.standin.WaitMessages(n, 20*time.Second)
			if len(got) != n || upstreamtest.StripTrace(got[n-1].Data) != data {
				t.Fatalf("stand-in got %d messages; last %q", len(got), got[len(got)-1].Data)
			}
		})
	}
}

func TestPermanentRefusalReachesTheClient(t *testing.T) {
	// An alias the config lists but the account does not have: iCloud refuses it.
	e := newEnv(t, "[sender]\naliases = [\"stranger@example.com\"]\n")
	_, err := send(e.addr(), "stranger@example.com", []string{"friend@example.com"}, message("refused", "x\r\n"))
	se, ok := err.(*smtp.SMTPError)
	if !ok || se.Code != 553 || se.EnhancedCode != (smtp.EnhancedCode{5, 7, 0}) || !strings.Contains(se.Message, "not one of your addresses") {
		t.Fatalf("client got %v, want the upstream's 553 5.7.0 refusal", err)
	}
	q, _ := queue.Open(e.cfg.Queue.Dir)
	failed, _ := q.Failed()
	if len(failed) != 1 || failed[0].Final.Code != 553 {
		t.Fatalf("failed area: %+v", failed)
	}
	l := e.logs.lines(map[string]any{"stage": "mail", "smtp_code": 553, "enhanced_code": "5.7.0", "level": "error"})
	if len(l) != 1 || l[0]["remedy"] == "" || l[0]["queue_id"] != failed[0].ID || l[0]["attempt"] != 1.0 {
		t.Fatalf("want one error line with stage, code, remedy, queue_id, attempt; got %v\n%s", l, e.logs)
	}
}

func TestTransientFailureIsQueuedAndRetried(t *testing.T) {
	e := newEnv(t, "")
	e.standin.SetFaults(upstreamtest.Faults{Data: &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try again"}})
	reply, err := send(e.addr(), "demo@icloud.com", []string{"friend@example.com"}, message("retry", "x\r\n"))
	if err != nil || !strings.Contains(reply, "Queued as") {
		t.Fatalf("client got %q %v, want 250 queued", reply, err)
	}
	waitFor(t, 10*time.Second, func() bool {
		return len(e.logs.lines(map[string]any{"stage": "data", "smtp_code": 451, "message": "delivery failed; will retry"})) >= 2
	})
	l := e.logs.lines(map[string]any{"stage": "data", "smtp_code": 451})[0]
	for _, k := range []string{"queue_id", "port", "enhanced_code", "attempt", "next_retry", "remedy"} {
		if _, ok := l[k]; !ok {
			t.Errorf("retry log line lacks %s: %v", k, l)
		}
	}
	e.standin.SetFaults(upstreamtest.Faults{})
	if got := e.standin.WaitMessages(1, 10*time.Second); len(got) != 1 {
		t.Fatal("not delivered after the fault cleared")
	}
}

func TestUpstreamDownThenUpDrainsQuickly(t *testing.T) {
	// Default probe interval and backoff: the drain must come from the
	// probe, not from each message's own backoff.
	e := newEnv(t, "")
	e.stop()
	e.cfg.Delivery.ProbeInterval = config.Duration(5 * time.Second)
	e.cfg.Delivery.RetryMin = config.Duration(30 * time.Second)
	e.cfg.Delivery.RetryMax = config.Duration(time.Hour)
	s := e.standin
	s.SetPort(s.StartTLSPort, upstreamtest.PortRefused)
	s.SetPort(s.TLSPort, upstreamtest.PortRefused)
	e.start()
	const n = 10
	for i := 0; i < n; i++ {
		if _, err := send(e.addr(), "demo@icloud.com", []string{"friend@example.com"}, message(fmt.Sprintf("down-%d", i), "x\r\n")); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(500 * time.Millisecond)
	if len(s.Messages()) != 0 {
		t.Fatal("delivered while down?")
	}
	if l := e.logs.lines(map[string]any{"message": "upstream unreachable: queued messages wait and are sent as soon as a probe sees it again"}); len(l) != 1 {
		t.Fatalf("want exactly one 'unreachable' line, got %d", len(l))
	}
	up := time.Now()
	s.SetPort(s.StartTLSPort, upstreamtest.PortUp)
	s.SetPort(s.TLSPort, upstreamtest.PortUp)
	got := s.WaitMessages(n, 15*time.Second)
	t.Logf("queue drained %v after the upstream came back", time.Since(up).Round(time.Millisecond))
	if len(got) != n {
		t.Fatalf("%d of %d delivered within 15s of the upstream's return", len(got), n)
	}
	time.Sleep(300 * time.Millisecond)
	ids := map[string]int{}
	for _, m := range s.Messages() {
		ids[string(m.Data)]++
	}
	if len(ids) != n {
		t.Fatalf("duplicates: %d distinct of %d", len(ids), len(s.Messages()))
	}
}

func TestBadCertificateNeverSendsPassword(t *testing.T) {
	e := newEnv(t, "")
	e.standin.SetFaults(upstreamtest.Faults{BadCert: true})
	reply, err := send(e.addr(), "demo@icloud.com", []string{"friend@example.com"}, message("badcert", "x\r\n"))
	if err != nil || !strings.Contains(reply, "Queued") {
		t.Fatalf("got %q %v", reply, err)
	}
	waitFor(t, 10*time.Second, func() bool { return len(e.logs.lines(map[string]any{"stage": "tls", "level": "warn"})) > 0 })
	l := e.logs.lines(map[string]any{"stage": "tls", "level": "warn"})[0]
	if !strings.Contains(fmt.Sprint(l["remedy"]), "intercepting TLS") || !strings.Contains(fmt.Sprint(l["error"]), "unknown authority") {
		t.Fatalf("tls log line: %v", l)
	}
	time.Sleep(300 * time.Millisecond) // let probes run against the bad certificate too
	if len(e.standin.Messages()) != 0 || e.standin.AuthAttempts() != 0 {
		t.Fatalf("delivered %d, %d AUTH attempts: nothing may be sent over an unverified connection", len(e.standin.Messages()), e.standin.AuthAttempts())
	}
}

func TestLoginRefusalPausesAllDeliveries(t *testing.T) {
	e := newEnv(t, "")
	e.standin.SetFaults(upstreamtest.Faults{AuthFail: true})
	for i := 0; i < 4; i++ {
		if _, err := send(e.addr(), "demo@icloud.com", []string{"friend@example.com"}, message(fmt.Sprintf("auth-%d", i), "x\r\n")); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(time.Second) // several retry_min periods
	if n := e.standin.AuthAttempts(); n != 1 {
		t.Fatalf("%d login attempts; a refused login must pause deliveries after the first", n)
	}
	l := e.logs.lines(map[string]any{"stage": "auth", "smtp_code": 535, "level": "error"})
	if len(l) != 1 || !strings.Contains(fmt.Sprint(l[0]["remedy"]), "app-specific password") {
		t.Fatalf("want one clear pause line, got %v", l)
	}
	q, _ := queue.Open(e.cfg.Queue.Dir)
	if act, _ := q.Active(); len(act) != 4 {
		t.Fatalf("%d messages queued, want all 4 kept", len(act))
	}
}

func TestDisallowedAddressIsRefused(t *testing.T) {
	e := newEnv(t, "")
	e.stop()
	e.cfg.Listen.Addr = "0.0.0.0:0"
	e.cfg = e.config(strings.Replace(mustRead(t, filepath.Join(e.dir, "config.toml")), "[listen]\naddr = \"127.0.0.1:0\"",
		"[listen]\naddr = \"0.0.0.0:0\"\nallow = [\"127.0.0.1/32\"]\n[[listen.users]]\nusername = \"office\"\npassword = \"office-pass\"", 1))
	e.start()
	_, port, _ := net.SplitHostPort(e.addr())
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", "127.0.0.1:"+port)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	line, _ := bufio.NewReader(c).ReadString('\n')
	if !strings.HasPrefix(line, "554 5.7.1 ") {
		t.Fatalf("127.0.0.2 got %q, want a 554 before any command", line)
	}
	if l := e.logs.lines(map[string]any{"stage": "accept", "level": "warn"}); len(l) != 1 || !strings.HasPrefix(fmt.Sprint(l[0]["client"]), "127.0.0.2:") {
		t.Fatalf("refusal log: %v", l)
	}
	// 127.0.0.1 is allowed, but must log in.
	cl, err := smtp.Dial("127.0.0.1:" + port)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.Mail("demo@icloud.com", nil); err == nil || !strings.Contains(err.Error(), "530") {
		t.Fatalf("MAIL without login: %v, want 530", err)
	}
	if err := cl.Auth(sasl.NewPlainClient("", "office", "wrong")); err == nil {
		t.Fatal("wrong local password accepted")
	}
	if err := cl.Auth(sasl.NewPlainClient("", "office", "office-pass")); err != nil {
		t.Fatal(err)
	}
	if _, err := sendOn(cl, "demo@icloud.com", []string{"friend@example.com"}, message("authed", "x\r\n")); err != nil {
		t.Fatal(err)
	}
}

func TestClientsThatInsistOnAuthAndStartTLS(t *testing.T) {
	e := newEnv(t, "")
	c, err := smtp.DialStartTLS(e.addr(), &tls.Config{InsecureSkipVerify: true}) // the relay's own self-signed certificate
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Auth(sasl.NewLoginClient("anything", "anything")); err != nil {
		t.Fatalf("AUTH LOGIN with no local users configured must be accepted: %v", err)
	}
	if _, err := sendOn(c, "demo@icloud.com", []string{"friend@example.com"}, message("tls-auth", "x\r\n")); err != nil {
		t.Fatal(err)
	}
	if got := e.standin.WaitMessages(1, 10*time.Second); len(got) != 1 {
		t.Fatal("not delivered")
	}
}

func TestSizeLimit(t *testing.T) {
	e := newEnv(t, "[listen]\naddr = \"127.0.0.1:0\"\nmax_message_size = 2048\n")
	head := message("exact", "")
	exact := head + strings.Repeat("a", 2048-len(head)-2) + "\r\n"
	if _, err := send(e.addr(), "demo@icloud.com", []string{"friend@example.com"}, exact); err != nil {
		t.Fatalf("a message of exactly the limit was refused: %v", err)
	}
	_, err := send(e.addr(), "demo@icloud.com", []string{"friend@example.com"}, head+strings.Repeat("a", 2048-len(head)-1)+"\r\n")
	if se, ok := err.(*smtp.SMTPError); !ok || se.Code != 552 || !strings.Contains(se.Message, "2048 bytes") {
		t.Fatalf("one byte over: %v, want 552 naming the limit", err)
	}
}

func TestSpoolWriteFailureAnswers451(t *testing.T) {
	// The message data cannot be written at all, and the message is too
	// big to be held in memory while it is staged (a small one would be
	// delivered from memory: see TestCommitFailureAnswers451).
	e := newEnv(t, "")
	active := filepath.Join(e.cfg.Queue.Dir, "active")
	os.RemoveAll(active)
	os.WriteFile(active, nil, 0o600)
	_, err := send(e.addr(), "demo@icloud.com", []string{"friend@example.com"}, message("spool", strings.Repeat(strings.Repeat("x", 998)+"\r\n", 200)))
	if se, ok := err.(*smtp.SMTPError); !ok || se.Code != 451 {
		t.Fatalf("got %v, want 451 (never 250, never a permanent 5xx)", err)
	}
	if l := e.logs.lines(map[string]any{"stage": "queue", "level": "error"}); len(l) != 1 {
		t.Fatalf("queue failure log: %v", l)
	}
	if n := len(e.standin.Messages()); n != 0 {
		t.Fatalf("the upstream got %d messages", n)
	}
}

// A message the upstream does not take at once must be stored before the
// client hears "queued"; when that fails, the client hears 451 and nothing
// is left half-stored.
func TestCommitFailureAnswers451(t *testing.T) {
	e := newEnv(t, "")
	e.standin.SetFaults(upstreamtest.Faults{Data: &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try again"}})
	tmp := filepath.Join(e.cfg.Queue.Dir, "tmp")
	os.RemoveAll(tmp)
	os.WriteFile(tmp, nil, 0o600) // the metadata's temp file cannot be made
	_, err := send(e.addr(), "demo@icloud.com", []string{"friend@example.com"}, message("spool", "x\r\n"))
	if se, ok := err.(*smtp.SMTPError); !ok || se.Code != 451 {
		t.Fatalf("got %v, want 451 (never 250, never a permanent 5xx)", err)
	}
	if l := e.logs.lines(map[string]any{"stage": "queue", "level": "error"}); len(l) == 0 {
		t.Fatal("no queue error logged")
	}
	left, _ := filepath.Glob(filepath.Join(e.cfg.Queue.Dir, "active", "*"))
	if len(left) != 0 {
		t.Fatalf("left behind: %v", left)
	}
}

func TestPartialRecipientRefusal(t *testing.T) {
	e := newEnv(t, "")
	e.standin.SetFaults(upstreamtest.Faults{Rcpt: map[string]*smtp.SMTPError{"nobody@example.com": {Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}}})
	reply, err := send(e.addr(), "demo@icloud.com", []string{"friend@example.com", "nobody@example.com"}, message("partial", "x\r\n"))
	if err != nil {
		t.Fatalf("one recipient got it: the client must get 250, got %v", err)
	}
	// The 250 tells who did not get it, and why.
	if !strings.Contains(reply, "1 of 2 recipients") || !strings.Contains(reply, "<nobody@example.com> 550 no such user") {
		t.Errorf("client reply %q does not name the refused recipient", reply)
	}
	got := e.standin.WaitMessages(1, 10*time.Second)
	if len(got) != 1 || strings.Join(got[0].To, ",") != "friend@example.com" {
		t.Fatalf("got %+v", got)
	}
	q, _ := queue.Open(e.cfg.Queue.Dir)
	waitFor(t, 5*time.Second, func() bool { f, _ := q.Failed(); return len(f) == 1 })
	f, _ := q.Failed()
	for _, r := range f[0].Rcpts {
		want := map[string]queue.Status{"friend@example.com": queue.Delivered, "nobody@example.com": queue.Failed}[r.Addr]
		if r.Status != want {
			t.Errorf("%s: %s, want %s", r.Addr, r.Status, want)
		}
	}
}

func TestRestartPicksUpTheQueue(t *testing.T) {
	e := newEnv(t, "")
	s := e.standin
	s.SetPort(s.StartTLSPort, upstreamtest.PortRefused)
	s.SetPort(s.TLSPort, upstreamtest.PortRefused)
	for i := 0; i < 3; i++ {
		send(e.addr(), "demo@icloud.com", []string{"friend@example.com"}, message(fmt.Sprintf("restart-%d", i), "x\r\n"))
	}
	e.stop()
	s.SetPort(s.StartTLSPort, upstreamtest.PortUp)
	s.SetPort(s.TLSPort, upstreamtest.PortUp)
	e.start()
	if got := s.WaitMessages(3, 15*time.Second); len(got) != 3 {
		t.Fatalf("%d of 3 delivered after restart", len(got))
	}
}

func mustRead(t *testing.T, path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func waitFor(t *testing.T, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestClientAnnouncingMoreThanUpstreamAcceptsIsRefusedAtMail(t *testing.T) {
	e := newEnvWith(t, upstreamtest.Options{MaxSize: 1 << 20}, "")
	// One delivery teaches the relay the upstream's SIZE (1 MiB here).
	if _, err := send(e.addr(), "demo@icloud.com", []string{"friend@example.com"}, message("learn", "x\r\n")); err != nil {
		t.Fatal(err)
	}
	e.standin.WaitMessages(1, 10*time.Second)
	c, err := smtp.Dial(e.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	err = c.Mail("demo@icloud.com", &smtp.MailOptions{Size: 1 << 20})
	if se, ok := err.(*smtp.SMTPError); !ok || se.Code != 552 || !strings.Contains(se.Message, "iCloud accepts up to 1040384 bytes") {
		t.Fatalf("MAIL SIZE over the upstream's limit: %v, want 552", err)
	}
}

func TestBlackholed587FallsBackTo465AndStaysThere(t *testing.T) {
	e := newEnv(t, "")
	s := e.standin
	s.SetPort(s.StartTLSPort, upstreamtest.PortBlackhole)
	for i := 0; i < 2; i++ {
		if _, err := send(e.addr(), "demo@icloud.com", []string{"friend@example.com"}, message(fmt.Sprintf("bh-%d", i), "x\r\n")); err != nil {
			t.Fatal(err)
		}
		got := s.WaitMessages(i+1, 15*time.Second)
		if len(got) != i+1 || got[i].Port != s.TLSPort {
			t.Fatalf("message %d: got %+v, want delivery on port %d", i, got, s.TLSPort)
		}
	}
	// Only the first delivery waited for the silent 587: one greeting failure.
	if l := e.logs.lines(map[string]any{"stage": "greeting", "port": s.StartTLSPort}); len(l) != 1 {
		t.Fatalf("587 was tried %d times; the working port must be remembered", len(l))
	}
}

func TestGracefulStopFinishesMessagesInFlightAndDropsIdleClients(t *testing.T) {
	e := newEnv(t, "")
	s := e.standin
	s.SetPort(s.StartTLSPort, upstreamtest.PortRefused) // keep what is accepted in the queue
	s.SetPort(s.TLSPort, upstreamtest.PortRefused)

	idle, err := smtp.Dial(e.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	if err := idle.Hello("idle.test"); err != nil {
		t.Fatal(err)
	}
	busy, err := smtp.Dial(e.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	busy.Mail("demo@icloud.com", nil)
	busy.Rcpt("friend@example.com", nil)
	w, err := busy.Data()
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(w, "Subject: in flight\r\n\r\nfirst half\r\n")

	stopped := make(chan error, 1)
	a := e.app
	e.app = nil
	go func() { stopped <- a.Stop(contextWithTimeout(time.Minute)) }()
	// The idle client is let go at once...
	waitFor(t, 10*time.Second, func() bool { return idle.Noop() != nil })
	// ...while the one in the middle of a message may finish it.
	io.WriteString(w, "second half\r\n")
	if err := w.Close(); err != nil {
		t.Fatalf("message in flight during stop: %v, want 250", err)
	}
	if err := <-stopped; err != nil {
		t.Fatalf("Stop: %v", err)
	}
	q, _ := queue.Open(e.cfg.Queue.Dir)
	if act, _ := q.Active(); len(act) != 1 {
		t.Fatalf("%d queued after stop, want the in-flight message kept", len(act))
	}
}

func TestFailureNoticeGoesToTheAccountFromTheAccount(t *testing.T) {
	e := newEnv(t, "notify_failures = true\n")
	e.standin.SetFaults(upstreamtest.Faults{Rcpt: map[string]*smtp.SMTPError{"nobody@example.com": {Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}}})
	if _, err := send(e.addr(), "demo@icloud.com", []string{"nobody@example.com"}, message("bounce-me", "x\r\n")); err == nil {
		t.Fatal("want the 550 passed on")
	}
	got := e.standin.WaitMessages(1, 10*time.Second)
	if len(got) != 1 || got[0].From != "demo@icloud.com" || strings.Join(got[0].To, ",") != "demo@icloud.com" {
		t.Fatalf("notice: %+v", got)
	}
	data := string(got[0].Data)
	if !strings.Contains(data, "Subject: Undelivered: bounce-me") || !strings.Contains(data, "<nobody@example.com>: rcpt failed: no such user") ||
		!strings.Contains(data, "\r\nMessage-ID: <") {
		t.Fatalf("notice text:\n%s", data)
	}
	// A failing notice does not produce another notice.
	e.standin.SetFaults(upstreamtest.Faults{Rcpt: map[string]*smtp.SMTPError{
		"nobody@example.com": {Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"},
		"demo@icloud.com":    {Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "mailbox full"}}})
	send(e.addr(), "demo@icloud.com", []string{"nobody@example.com"}, message("bounce-again", "x\r\n"))
	q, _ := queue.Open(e.cfg.Queue.Dir)
	waitFor(t, 10*time.Second, func() bool { f, _ := q.Failed(); return len(f) == 3 })
	time.Sleep(300 * time.Millisecond)
	if f, _ := q.Failed(); len(f) != 3 {
		t.Fatalf("failed area has %d, want 3 (2 messages + the failed notice, and no notice of it)", len(f))
	}
}

// With a sync window a message is only staged while its first attempt
// runs; whenever the client hears "queued" it must already be committed:
// when the attempt failed (the worker commits) and when the window ran out
// mid-attempt (the session commits).
func TestQueuedMeansCommitted(t *testing.T) {
	committed := func(t *testing.T, e *env, reply string) {
		t.Helper()
		_, rest, ok := strings.Cut(reply, "Queued as ")
		if !ok {
			t.Fatalf("client got %q, want 250 queued", reply)
		}
		id, _, _ := strings.Cut(rest, ";")
		for _, f := range []string{id + ".json", id + ".eml"} {
			if _, err := os.Stat(filepath.Join(e.cfg.Queue.Dir, "active", f)); err != nil {
				t.Fatalf("the client heard %q but %s is not in the queue: %v", reply, f, err)
			}
		}
	}
	t.Run("attempt failed", func(t *testing.T) {
		e := newEnv(t, "")
		e.standin.SetFaults(upstreamtest.Faults{Data: &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try again"}})
		reply, err := send(e.addr(), "demo@icloud.com", []string{"friend@example.com"}, message("fail", "x\r\n"))
		if err != nil {
			t.Fatal(err)
		}
		committed(t, e, reply)
	})
	t.Run("window ran out", func(t *testing.T) {
		e := newEnv(t, `sync_window = "200ms"`)
		e.standin.SetFaults(upstreamtest.Faults{Delay: 400 * time.Millisecond})
		reply, err := send(e.addr(), "demo@icloud.com", []string{"friend@example.com"}, message("slow", "x\r\n"))
		if err != nil {
			t.Fatal(err)
		}
		committed(t, e, reply)
		// The attempt goes on and delivers; then the queue is empty again.
		if got := e.standin.WaitMessages(1, 10*time.Second); len(got) != 1 {
			t.Fatal("not delivered")
		}
		waitFor(t, 5*time.Second, func() bool {
			left, _ := filepath.Glob(filepath.Join(e.cfg.Queue.Dir, "active", "*"))
			return len(left) == 0
		})
	})
	t.Run("delivered at once", func(t *testing.T) {
		e := newEnv(t, "")
		reply, err := send(e.addr(), "demo@icloud.com", []string{"friend@example.com"}, message("fast", "x\r\n"))
		if err != nil || !strings.Contains(reply, "Delivered to iCloud") {
			t.Fatalf("client got %q %v", reply, err)
		}
		if left, _ := filepath.Glob(filepath.Join(e.cfg.Queue.Dir, "active", "*")); len(left) != 0 {
			t.Fatalf("left in the queue: %v", left)
		}
	})
}

// statusSection gives each test relay a status page of its own (a port
// the OS picks), unless the test sets [status] itself.
func statusSection(extra string) string {
	if strings.Contains(extra, "[status]") {
		return ""
	}
	return "\n[status]\naddr = \"127.0.0.1:0\"\n"
}
