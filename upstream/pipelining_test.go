package upstream_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/icloud-relay/icloud-relay/internal/certs"
	"github.com/icloud-relay/icloud-relay/upstream"
)

// scripted is a small implicit-TLS SMTP server that watches how the client
// times its commands: a command sent before the previous reply is a
// violation unless PIPELINING was offered; with it, MAIL, every RCPT and
// DATA must arrive together.
type scripted struct {
	pipelining bool
	chunking   bool              // offer CHUNKING (BDAT)
	mailReply  string            // reply to MAIL; "" means 250
	rcptReply  map[string]string // reply per recipient; absent means 250
	port       int
	roots      *x509.CertPool

	closeAfter int           // after this many messages on a connection, answer the next MAIL with 421 and hang up (0: never)
	mailDelay  time.Duration // before each reply to MAIL: a server far away
	// beforeAccept, when set, runs before the reply that accepts the n-th
	// message of a connection (from 0).
	beforeAccept func(n int)

	mu          sync.Mutex
	violations  []string
	bodies      []string
	mails       int
	dotFollowed int // ends of data that arrived together with the next commands
	turns       int // times, after login, the server waited for the client
}

// testTLS returns a certificate for 127.0.0.1 from a new test CA, and the
// roots that trust it.
func testTLS(t *testing.T, name string) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	ca, err := certs.NewCA(name)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.Issue("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca.PEM)
	return cert, roots
}

func startScripted(t *testing.T, sc *scripted) {
	t.Helper()
	var cert tls.Certificate
	cert, sc.roots = testTLS(t, "scripted test CA")
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	sc.port = ln.Addr().(*net.TCPAddr).Port
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go sc.serve(c)
		}
	}()
}

func (sc *scripted) violation(format string, args ...any) {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	sc.violations = append(sc.violations, fmt.Sprintf(format, args...))
}

func (sc *scripted) serve(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	r, w := bufio.NewReader(c), bufio.NewWriter(c)
	say := func(lines ...string) {
		for _, l := range lines {
			w.WriteString(l + "\r\n")
		}
		w.Flush()
	}
	say("220 scripted ESMTP")
	accepted, inMail, delivered, authed := 0, false, 0, false
	for {
		waited := r.Buffered() == 0
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		if waited && authed {
			sc.mu.Lock()
			sc.turns++
			sc.mu.Unlock()
		}
		line = strings.TrimRight(line, "\r\n")
		verb := strings.ToUpper(strings.Fields(line + " x")[0])
		more := r.Buffered() > 0 // the client sent more before this reply
		switch {
		case verb == "MAIL" && sc.pipelining && !more:
			sc.violation("MAIL arrived alone although PIPELINING was offered")
		case verb == "DATA" && sc.pipelining && more:
			sc.violation("data arrived before the 354")
		case verb == "BDAT" && !sc.chunking:
			sc.violation("BDAT without CHUNKING offered")
		case !sc.pipelining && more:
			sc.violation("%q was followed by more before its reply, without PIPELINING", line)
		}
		switch verb {
		case "EHLO":
			ext := []string{"250-scripted", "250-AUTH PLAIN", "250-8BITMIME"}
			if sc.pipelining {
				ext = append(ext, "250-PIPELINING")
			}
			if sc.chunking {
				ext = append(ext, "250-CHUNKING")
			}
			say(append(ext, "250 SIZE 1000000")...)
		case "AUTH":
			authed = true
			say("235 2.7.0 ok")
		case "MAIL":
			sc.mu.Lock()
			sc.mails++
			full := sc.closeAfter > 0 && delivered >= sc.closeAfter
			sc.mu.Unlock()
			if full {
				say("421 4.7.0 closing: enough for this connection")
				return
			}
			accepted, inMail = 0, sc.mailReply == ""
			time.Sleep(sc.mailDelay)
			if !inMail {
				say(sc.mailReply)
				continue
			}
			say("250 2.1.0 ok")
		case "RCPT":
			addr := strings.Trim(line[len("RCPT TO:"):], "<> ")
			if !inMail {
				say("503 5.5.1 no MAIL")
			} else if reply, ok := sc.rcptReply[addr]; ok {
				say(reply)
			} else {
				accepted++
				say("250 2.1.5 ok")
			}
		case "DATA":
			if accepted == 0 {
				say("554 5.5.1 no valid recipients")
				continue
			}
			say("354 go ahead")
			var b strings.Builder
			for {
				l, err := r.ReadString('\n')
				if err != nil {
					return
				}
				if l == ".\r\n" {
					if r.Buffered() > 0 {
						sc.mu.Lock()
						sc.dotFollowed++
						sc.mu.Unlock()
					}
					break
				}
				b.WriteString(strings.TrimPrefix(l, "."))
			}
			sc.mu.Lock()
			sc.bodies = append(sc.bodies, b.String())
			sc.mu.Unlock()
			if sc.beforeAccept != nil {
				sc.beforeAccept(delivered)
			}
			delivered++
			say("250 2.0.0 queued")
		case "BDAT":
			var n int
			fmt.Sscanf(line, "BDAT %d LAST", &n)
			chunk := make([]byte, n)
			if _, err := io.ReadFull(r, chunk); err != nil {
				return
			}
			if !inMail || accepted == 0 {
				say("554 5.5.1 no valid recipients")
				continue
			}
			sc.mu.Lock()
			sc.bodies = append(sc.bodies, string(chunk))
			sc.mu.Unlock()
			if sc.beforeAccept != nil {
				sc.beforeAccept(delivered)
			}
			delivered++
			inMail = false
			say("250 2.0.0 queued")
		case "RSET":
			accepted, inMail = 0, false
			say("250 2.0.0 ok")
		case "QUIT":
			say("221 2.0.0 bye")
			return
		default:
			say("500 5.5.2 what?")
		}
	}
}

func (sc *scripted) client(t *testing.T) *upstream.Client {
	// The STARTTLS port refuses at once, so the client uses implicit TLS.
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refusing := closed.Addr().(*net.TCPAddr).Port
	closed.Close()
	return upstream.New(upstream.Config{
		Host: "127.0.0.1", StartTLSPort: refusing, TLSPort: sc.port, Username: "me@icloud.com", Password: "pw",
		RootCAs: sc.roots, HeloName: "relay.test", ConnectTimeout: 2 * time.Second, Timeout: 2 * time.Second,
		ReprobeInterval: time.Hour, MaxIdle: 1, IdleTimeout: time.Minute, MaxMessagesPerConnection: 100,
	})
}

func (sc *scripted) check(t *testing.T) {
	t.Helper()
	sc.mu.Lock()
	defer sc.mu.Unlock()
	for _, v := range sc.violations {
		t.Error(v)
	}
}

// withGoneRecipient starts a scripted server that refuses
// gone@example.com, and a client for it.
func withGoneRecipient(t *testing.T, pipelining bool) (*scripted, *upstream.Client) {
	sc := &scripted{pipelining: pipelining, rcptReply: map[string]string{"gone@example.com": "550 5.1.1 no such user"}}
	startScripted(t, sc)
	c := sc.client(t)
	t.Cleanup(c.CloseIdle)
	return sc, c
}

const dotty = "Subject: dots\r\n\r\n.leading dot\r\n..two\r\nbare\nLF\r\n."

func TestTransactionWithAndWithoutPipelining(t *testing.T) {
	for _, pipelining := range []bool{true, false} {
		t.Run(fmt.Sprintf("pipelining=%v", pipelining), func(t *testing.T) {
			sc, c := withGoneRecipient(t, pipelining)
			for i := 0; i < 3; i++ {
				res, err := c.Send(context.Background(), &upstream.Message{From: "me@icloud.com",
					To: []string{"a@example.com", "gone@example.com", "b@example.com"}, Body: strings.NewReader(dotty)})
				if err != nil {
					t.Fatal(err)
				}
				if e := res.Refused["gone@example.com"]; len(res.Refused) != 1 || e == nil || e.Code != 550 || e.EnhancedCode != "5.1.1" {
					t.Fatalf("refusals: %+v", res.Refused)
				}
			}
			sc.check(t)
			// Dot-stuffing undone by the server gives back the message, with
			// the bare LF made CRLF and a final CRLF added.
			want := "Subject: dots\r\n\r\n.leading dot\r\n..two\r\nbare\r\nLF\r\n.\r\n"
			if len(sc.bodies) != 3 || sc.bodies[0] != want {
				t.Fatalf("bodies %q, want 3 × %q", sc.bodies, want)
			}
			if n := c.Logins(); n != 1 {
				t.Errorf("%d logins for 3 messages on a reused connection", n)
			}
		})
	}
}

func TestPipelinedRefusalsLeaveTheConnectionUsable(t *testing.T) {
	sc := &scripted{pipelining: true, rcptReply: map[string]string{"gone@example.com": "550 5.1.1 no such user"}}
	startScripted(t, sc)
	c := sc.client(t)
	defer c.CloseIdle()
	send := func(to ...string) (*upstream.Result, error) {
		return c.Send(context.Background(), &upstream.Message{From: "me@icloud.com", To: to, Body: strings.NewReader(dotty)})
	}
	// Every recipient refused: the server refuses DATA, the client reports
	// the recipient's refusal.
	_, err := send("gone@example.com")
	var ue *upstream.Error
	if !errors.As(err, &ue) || ue.Stage != upstream.StageRcpt || ue.Code != 550 || ue.Class != upstream.Permanent {
		t.Fatalf("all refused: %v", err)
	}
	if _, err := send("a@example.com"); err != nil {
		t.Fatalf("after a refused transaction: %v", err)
	}
	// MAIL refused: the replies to RCPT and DATA are read and dropped, and
	// the connection stays in step.
	sc.mu.Lock()
	sc.mailReply = "550 5.7.1 sender not allowed"
	sc.mu.Unlock()
	_, err = send("a@example.com", "b@example.com")
	if !errors.As(err, &ue) || ue.Stage != upstream.StageMail || ue.Code != 550 || ue.EnhancedCode != "5.7.1" {
		t.Fatalf("MAIL refused: %v", err)
	}
	sc.mu.Lock()
	sc.mailReply = ""
	sc.mu.Unlock()
	if _, err := send("a@example.com"); err != nil {
		t.Fatalf("after a refused MAIL: %v", err)
	}
	if n := c.Logins(); n != 1 {
		t.Errorf("%d logins: refusals should not cost the connection", n)
	}
	if len(sc.bodies) != 2 {
		t.Errorf("%d messages delivered, want 2", len(sc.bodies))
	}
	sc.check(t)
}

// A batch goes out back to back: with PIPELINING each message's end of
// data travels with the next message's commands, a transaction refused
// before its data is reset along the way, and every message gets its own
// outcome; without PIPELINING the same batch goes one step at a time.
func TestBatchBackToBack(t *testing.T) {
	for _, pipelining := range []bool{true, false} {
		t.Run(fmt.Sprintf("pipelining=%v", pipelining), func(t *testing.T) {
			sc, c := withGoneRecipient(t, pipelining)
			msg := func(to ...string) *upstream.Message {
				return &upstream.Message{From: "me@icloud.com", To: to, Body: strings.NewReader(dotty)}
			}
			out := c.SendBatch(context.Background(), []*upstream.Message{
				msg("a@example.com"),
				msg("gone@example.com"), // every recipient refused: no data, RSET
				msg("b@example.com", "gone@example.com"),
				msg("c@example.com"),
			})
			var ue *upstream.Error
			if out[0].Err != nil || out[3].Err != nil || out[2].Err != nil || len(out[2].Result.Refused) != 1 {
				t.Fatalf("outcomes: %+v %+v %+v %+v", out[0], out[1], out[2], out[3])
			}
			if !errors.As(out[1].Err, &ue) || ue.Stage != upstream.StageRcpt || ue.Code != 550 {
				t.Fatalf("refused message: %v", out[1].Err)
			}
			sc.check(t)
			sc.mu.Lock()
			defer sc.mu.Unlock()
			if len(sc.bodies) != 3 || c.Logins() != 1 {
				t.Fatalf("%d messages over %d logins, want 3 over 1", len(sc.bodies), c.Logins())
			}
			// Ends of data followed by the next commands: after messages 1
			// and 3 (message 2 had no data; its RSET went with message 3's).
			if want := map[bool]int{true: 2, false: 0}[pipelining]; sc.dotFollowed != want {
				t.Errorf("%d ends of data travelled with the next commands, want %d", sc.dotFollowed, want)
			}
		})
	}
}

// A connection the server closes in the middle of a batch hands the rest
// to a new one; nothing is lost or sent twice.
func TestBatchContinuesOnANewConnection(t *testing.T) {
	for _, chunking := range []bool{false, true} {
		t.Run(fmt.Sprintf("chunking=%v", chunking), func(t *testing.T) {
			sc := &scripted{pipelining: true, chunking: chunking, closeAfter: 2}
			startScripted(t, sc)
			c := sc.client(t)
			defer c.CloseIdle()
			var msgs []*upstream.Message
			for i := 0; i < 3; i++ {
				msgs = append(msgs, &upstream.Message{From: "me@icloud.com", To: []string{fmt.Sprintf("r%d@example.com", i)},
					Size: int64(len(dotty)), Body: strings.NewReader(dotty)})
			}
			for i, d := range c.SendBatch(context.Background(), msgs) {
				if d.Err != nil {
					t.Errorf("message %d: %v", i, d.Err)
				}
			}
			sc.check(t)
			sc.mu.Lock()
			defer sc.mu.Unlock()
			if len(sc.bodies) != 3 || c.Logins() != 2 {
				t.Fatalf("%d messages over %d logins, want 3 over 2", len(sc.bodies), c.Logins())
			}
			// The third message, read once for the first connection, went
			// whole on the second.
			want := "Subject: dots\r\n\r\n.leading dot\r\n..two\r\nbare\r\nLF\r\n.\r\n"
			if sc.bodies[2] != want {
				t.Fatalf("third message %q, want %q", sc.bodies[2], want)
			}
		})
	}
}

// With CHUNKING and PIPELINING a whole batch goes out in one round trip:
// MAIL, RCPT, "BDAT n LAST" and the content for each message, with an RSET
// before each after the first, and every message keeps its own outcome.
func TestChunkedBatchInOneRoundTrip(t *testing.T) {
	sc := &scripted{pipelining: true, chunking: true, rcptReply: map[string]string{"gone@example.com": "550 5.1.1 no such user"}}
	startScripted(t, sc)
	c := sc.client(t)
	defer c.CloseIdle()
	msg := func(to ...string) *upstream.Message {
		return &upstream.Message{From: "me@icloud.com", To: to, Size: int64(len(dotty)), Body: strings.NewReader(dotty)}
	}
	out := c.SendBatch(context.Background(), []*upstream.Message{
		msg("a@example.com"),
		msg("gone@example.com"),
		msg("b@example.com", "gone@example.com"),
		msg("c@example.com"),
	})
	var ue *upstream.Error
	if out[0].Err != nil || out[2].Err != nil || out[3].Err != nil || len(out[2].Result.Refused) != 1 {
		t.Fatalf("outcomes: %+v %+v %+v %+v", out[0], out[1], out[2], out[3])
	}
	if !errors.As(out[1].Err, &ue) || ue.Stage != upstream.StageRcpt || ue.Code != 550 || ue.Class != upstream.Permanent {
		t.Fatalf("refused message: %v", out[1].Err)
	}
	sc.check(t)
	sc.mu.Lock()
	defer sc.mu.Unlock()
	want := "Subject: dots\r\n\r\n.leading dot\r\n..two\r\nbare\r\nLF\r\n.\r\n"
	if len(sc.bodies) != 3 || sc.bodies[0] != want {
		t.Fatalf("bodies %q, want 3 × %q", sc.bodies, want)
	}
	if sc.turns != 1 {
		t.Errorf("the batch took %d round trips, want 1", sc.turns)
	}
}

// Each message of a batch is reported done (so the relay can file it) as
// soon as its reply is read, before the next one's: the server here holds
// back its reply to each message until the one before has been reported.
func TestEachMessageIsDoneBeforeTheNextReplyIsRead(t *testing.T) {
	for _, chunking := range []bool{true, false} {
		t.Run(fmt.Sprintf("chunking=%v", chunking), func(t *testing.T) {
			const n = 4
			reported := make([]chan struct{}, n)
			for i := range reported {
				reported[i] = make(chan struct{})
			}
			sc := &scripted{pipelining: true, chunking: chunking}
			sc.beforeAccept = func(k int) {
				if k == 0 {
					return
				}
				select {
				case <-reported[k-1]:
				case <-time.After(3 * time.Second):
					sc.violation("message %d was not reported done before the reply to message %d was read", k-1, k)
				}
			}
			startScripted(t, sc)
			c := sc.client(t)
			defer c.CloseIdle()
			var msgs []*upstream.Message
			for i := 0; i < n; i++ {
				i := i
				msgs = append(msgs, &upstream.Message{From: "me@icloud.com", To: []string{"a@example.com"}, Body: strings.NewReader(dotty),
					Done: func(d upstream.Delivery) {
						if d.Err != nil {
							t.Errorf("message %d: %v", i, d.Err)
						}
						close(reported[i])
					}})
			}
			for i, d := range c.SendBatch(context.Background(), msgs) {
				if d.Err != nil {
					t.Fatalf("message %d: %v", i, d.Err)
				}
			}
			sc.check(t)
		})
	}
}

// A delivery's RoundTrip is the network's, not the server's work: this
// server takes 40 ms over every message's data and answers MAIL at once,
// or 30 ms late as across a network. The first message of a batch times
// its MAIL's reply; the others, sent behind it, time nothing. (The relay
// waits for a bulk message only where the round trip is short, bulk.go.)
func TestRoundTripIsTheNetworksNotTheServersWork(t *testing.T) {
	const work, n = 40 * time.Millisecond, 4
	for _, far := range []time.Duration{0, 30 * time.Millisecond} {
		for _, mode := range []struct{ pipelining, chunking bool }{{false, false}, {true, false}, {true, true}} {
			t.Run(fmt.Sprintf("mail %v late,pipelining=%v,chunking=%v", far, mode.pipelining, mode.chunking), func(t *testing.T) {
				sc := &scripted{pipelining: mode.pipelining, chunking: mode.chunking, mailDelay: far, beforeAccept: func(int) { time.Sleep(work) }}
				startScripted(t, sc)
				c := sc.client(t)
				defer c.CloseIdle()
				var msgs []*upstream.Message
				for range n {
					msgs = append(msgs, &upstream.Message{From: "me@icloud.com", To: []string{"a@example.com"}, Body: strings.NewReader(dotty)})
				}
				out := c.SendBatch(context.Background(), msgs)
				for i, d := range out {
					switch {
					case d.Err != nil:
						t.Errorf("message %d: %v", i, d.Err)
					case i == 0 && (d.RoundTrip < far || d.RoundTrip >= far+work):
						t.Errorf("the first message's round trip: %v, want the MAIL reply's %v and not the data's %v", d.RoundTrip, far, work)
					case i > 0 && d.RoundTrip != 0:
						t.Errorf("message %d, sent behind the first, timed a round trip of %v", i, d.RoundTrip)
					}
				}
				sc.check(t)
			})
		}
	}
}
