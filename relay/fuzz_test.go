package relay

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/icloud-relay/icloud-relay/relay/queue"
	"github.com/icloud-relay/icloud-relay/upstream"
)

// FuzzFixMessage: header fix-ups never panic and never leave a bare LF.
func FuzzFixMessage(f *testing.F) {
	f.Add("From: Me <me@icloud.com>\r\nSubject: x\r\n\r\nbody\r\n", "header")
	f.Add("From: =?UTF-8?Q?J=C3=BCrgen?= <j@x.de>\nReply-To: a@b\n\n..dots\n", "header")
	f.Add("no header at all\n.\n", "envelope")
	f.Add("DKIM-Signature: v=1\r\nFrom: x@y\r\n\r\n", "off")
	f.Add("From: \"unterminated <x@y\r\n folded\r\n\r\n", "header")
	f.Fuzz(func(t *testing.T, msg, mode string) {
		r, _, err := fixMessage(newIntakeBuffers(), strings.NewReader(msg), intake{id: "ID", helo: "h", client: "c", by: "b", received: true,
			policy: SenderPolicy{Address: "me@icloud.com", Mode: mode}, now: time.Unix(0, 0)})
		if err != nil {
			return
		}
		out, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		for i := range out {
			if out[i] == '\n' && (i == 0 || out[i-1] != '\r') {
				t.Fatalf("bare LF at %d in %q", i, out)
			}
		}
	})
}

// FuzzReencodeLongLines: re-encoding either refuses with a LineError or
// leaves no line longer than 998 bytes; it never fails otherwise, and a
// plain message's text survives.
func FuzzReencodeLongLines(f *testing.F) {
	f.Add("Subject: s\r\n\r\n" + strings.Repeat("x", 1200) + "\r\n")
	f.Add("MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Transfer-Encoding: base64\r\n\r\n" + strings.Repeat("QUFB", 400) + "\r\n--b--\r\n")
	f.Add("Content-Type: message/rfc822\r\n\r\nSubject: " + strings.Repeat("a ", 600) + "\r\n\r\n" + strings.Repeat("=", 1500))
	f.Add("DKIM-Signature: x\r\n\r\n" + strings.Repeat("y", 999))
	f.Add("Content-Type: multipart/alternative; boundary=\"q\"\r\n\r\n--q\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n" + strings.Repeat("=C3=A9", 300) + "\r\n--q\r\nContent-Transfer-Encoding: binary\r\n\r\n" + strings.Repeat("\x00\r", 700) + "\r\n")
	f.Fuzz(func(t *testing.T, msg string) {
		var out bytes.Buffer
		err := reencodeLongLines(func() (io.Reader, error) { return strings.NewReader(msg), nil }, &out)
		var le *LineError
		if errors.As(err, &le) {
			return
		}
		if err != nil {
			t.Fatalf("re-encoding %q failed: %v", msg, err)
		}
		for i, l := range bytes.Split(out.Bytes(), []byte("\n")) {
			if n := len(bytes.TrimSuffix(l, []byte("\r"))); n > maxLineLength {
				t.Fatalf("line %d is %d bytes long after re-encoding %q", i+1, n, msg)
			}
		}
	})
}

type nopSender struct{}

func (nopSender) SendBatch(_ context.Context, msgs []*upstream.Message) []upstream.Delivery {
	out := make([]upstream.Delivery, len(msgs))
	for i := range out {
		out[i].Result = &upstream.Result{Refused: map[string]*upstream.Error{}}
	}
	return out
}
func (nopSender) Probe(context.Context) error { return nil }

var (
	fuzzOnce sync.Once
	fuzzAddr string
)

// fuzzRelay starts one listener for the whole fuzz run, with a real queue.
func fuzzRelay(t testing.TB, dir string) string {
	fuzzOnce.Do(func() {
		q, err := queue.Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		sched := NewScheduler(q, nopSender{}, Policy{Workers: 1, RetryMin: time.Second, RetryMax: time.Second, MaxAge: time.Hour,
			ProbeInterval: time.Second, AuthPause: time.Second}, zerolog.Nop())
		sched.Start(context.Background())
		in := NewIntake(q, IntakeConfig{Hostname: "fuzz", MaxMessageSize: 64 << 10, Sender: SenderPolicy{Address: "me@icloud.com", Mode: RewriteHeader}}, zerolog.Nop())
		srv := NewServer(ListenConfig{Addrs: []string{"127.0.0.1:0"}, Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, Hostname: "fuzz",
			MaxRecipients: 5, Timeout: 300 * time.Millisecond, Users: map[string]string{}}, in, sched, zerolog.Nop())
		if err := srv.Listen(); err != nil {
			t.Fatal(err)
		}
		srv.Serve()
		fuzzAddr = srv.Addr().String()
	})
	return fuzzAddr
}

// FuzzSMTPSession sends arbitrary command sequences to the relay's
// listener: no panic (go-smtp would answer "421 ... Internal server error"),
// no race, and the relay keeps answering.
func FuzzSMTPSession(f *testing.F) {
	f.Add("EHLO x\nMAIL FROM:<a@b>\nRCPT TO:<c@d>\nDATA\nSubject: s\n\nbody\n.\n")
	f.Add("HELO x\nAUTH PLAIN AGEAYg==\nMAIL FROM:<>\nRCPT TO:<c@d>\nRSET\nNOOP\n")
	f.Add("EHLO x\nMAIL FROM:<a@b> SIZE=99999999999\nRCPT TO:<>\nDATA\n")
	f.Add("EHLO x\nAUTH LOGIN\nYQ==\nYg==\nMAIL FROM:<a@b> SMTPUTF8\nRCPT TO:<ü@x>\nBDAT 3 LAST\nabc")
	f.Add("STARTTLS\nVRFY a\nEXPN b\nHELP\n\x00\xff\n")
	// BDAT with long and folded lines, commands after a failed transfer.
	f.Add("EHLO x\nMAIL FROM:<a@b>\nRCPT TO:<c@d>\nBDAT 2100\nSubject: s\n\n" + strings.Repeat("L", 2080) + "\nBDAT 0 LAST\nMAIL FROM:<a@b>\n")
	f.Add("EHLO x\nMAIL FROM:<a@b>\nRCPT TO:<c@d>\nBDAT 90000 LAST\nX-F: a\n" + strings.Repeat(" b\n", 200) + "\nbody\n")
	f.Add("EHLO x\nMAIL FROM:<a@b>\nRCPT TO:<c@d>\nDATA\nSubject: s\n\n" + strings.Repeat("w ", 3000) + "\n.\nMAIL FROM:<a@b>\nRCPT TO:<e@f>\nDATA\nx\n.\n")
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, script string) {
		addr := fuzzRelay(t, dir)
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		go func() {
			io.WriteString(c, strings.ReplaceAll(script, "\n", "\r\n")+"\r\nQUIT\r\n")
			// Then end the sending side, as a client that is done does: a
			// relay that reads on (the lingering close after a failed
			// transfer) sees the end at once instead of waiting out its
			// drain, which would make each run take seconds and the fuzz
			// engine miss its deadline.
			c.(*net.TCPConn).CloseWrite()
		}()
		var out bytes.Buffer
		io.Copy(&out, bufio.NewReader(c))
		if strings.Contains(out.String(), "Internal server error") {
			t.Fatalf("the session panicked on %q:\n%s", script, out.String())
		}
		// The relay still answers a fresh client.
		c2, err := net.DialTimeout("tcp", addr, 3*time.Second)
		if err != nil {
			t.Fatalf("relay stopped answering: %v", err)
		}
		c2.SetDeadline(time.Now().Add(3 * time.Second))
		line, _ := bufio.NewReader(c2).ReadString('\n')
		c2.Close()
		if !strings.HasPrefix(line, "220 ") {
			t.Fatalf("relay greeting after %q: %q", script, line)
		}
	})
}
