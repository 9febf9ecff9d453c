package app_test

// Hostile and broken local clients, driven over a real TCP connection
// against the running relay: nothing of a message body may ever be read as
// a command, and no client may hold a connection slot for ever.

import (
	"bufio"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// rawClient speaks SMTP by hand, so a test can do what no polite client does.
type rawClient struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dialRaw(t *testing.T, addr string) *rawClient {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	rc := &rawClient{t: t, c: c, r: bufio.NewReader(c)}
	if l := rc.reply(); !strings.HasPrefix(l, "220") {
		t.Fatalf("greeting %q", l)
	}
	return rc
}

// reply reads one whole reply (all its lines) and returns its last line, or
// "" when the connection ended first.
func (rc *rawClient) reply() string {
	rc.c.SetReadDeadline(time.Now().Add(20 * time.Second))
	for {
		l, err := rc.r.ReadString('\n')
		if err != nil {
			return ""
		}
		if len(l) < 4 || l[3] != '-' {
			return strings.TrimRight(l, "\r\n")
		}
	}
}

func (rc *rawClient) write(s string) {
	rc.t.Helper()
	rc.c.SetWriteDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.WriteString(rc.c, s); err != nil {
		rc.t.Fatalf("write: %v", err)
	}
}

// cmd sends a command and checks the reply's code.
func (rc *rawClient) cmd(line, code string) string {
	rc.t.Helper()
	rc.write(line + "\r\n")
	l := rc.reply()
	if !strings.HasPrefix(l, code) {
		rc.t.Fatalf("%s: got %q, want %s", line, l, code)
	}
	return l
}

// rest reads every reply line until the relay hangs up, and fails the
// test if it does not within a few seconds.
func (rc *rawClient) rest() []string {
	rc.t.Helper()
	var out []string
	rc.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		l, err := rc.r.ReadString('\n')
		if l != "" {
			out = append(out, strings.TrimRight(l, "\r\n"))
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			rc.t.Errorf("the relay did not hang up (replies so far: %q)", out)
			return out
		}
		if err != nil {
			return out
		}
	}
}

func (rc *rawClient) startData(rcpt string) {
	rc.t.Helper()
	rc.cmd("EHLO client.test", "250")
	rc.cmd("MAIL FROM:<demo@icloud.com>", "250")
	rc.cmd("RCPT TO:<"+rcpt+">", "250")
	rc.cmd("DATA", "354")
}

// The worst bug of the local side: a client that stalls inside DATA past
// the timeout, then sends the rest of its body, must never have that rest
// read as SMTP commands (a body with MAIL/RCPT/DATA lines smuggled a second
// message to its own recipient).
func TestStallInsideDataNeverSmugglesTheRestAsCommands(t *testing.T) {
	e := newEnv(t, "[listen]\naddr = \"127.0.0.1:0\"\ntimeout = \"1s\"\n")
	rc := dialRaw(t, e.addr())
	rc.startData("friend@example.com")
	rc.write("Subject: first\r\n\r\nfirst part of the body\r\n")
	time.Sleep(1700 * time.Millisecond)
	// The client wakes up and sends the rest, which looks like commands.
	io.WriteString(rc.c, "MAIL FROM:<demo@icloud.com>\r\nRCPT TO:<smuggled@example.com>\r\nDATA\r\nSubject: smuggled\r\n\r\nsmuggled\r\n.\r\nQUIT\r\n")
	replies := rc.rest()
	if len(replies) != 1 || !strings.HasPrefix(replies[0], "421 4.4.2 ") {
		t.Fatalf("after the stall the relay said %q; want one 421 4.4.2 and a hang-up", replies)
	}
	if strings.Contains(replies[0], "queue") || strings.Contains(replies[0], "disk") {
		t.Errorf("a client's stall is blamed on the queue: %q", replies[0])
	}
	time.Sleep(500 * time.Millisecond)
	for _, m := range e.standin.Messages() {
		t.Errorf("a message reached the upstream: %v %q", m.To, m.Data)
	}
	if l := e.logs.lines(map[string]any{"stage": "queue"}); len(l) > 0 {
		t.Errorf("a client's stall is logged as a queue failure: %v", l)
	}
	if l := e.logs.lines(map[string]any{"stage": "accept", "level": "warn"}); len(l) == 0 || l[0]["remedy"] == nil {
		t.Errorf("the stall is not logged with a remedy: %v", l)
	}
}

// The timeout is idle time: an upload that keeps moving, however slowly,
// is never cut off, even when it lasts many times the timeout.
func TestSlowSteadyUploadIsNotCutOff(t *testing.T) {
	e := newEnv(t, "[listen]\naddr = \"127.0.0.1:0\"\ntimeout = \"1s\"\n")
	rc := dialRaw(t, e.addr())
	rc.startData("friend@example.com")
	rc.write(message("slow", ""))
	start := time.Now()
	for time.Since(start) < 3500*time.Millisecond {
		rc.write(strings.Repeat("z", 2000) + "\r\n")
		time.Sleep(300 * time.Millisecond)
	}
	rc.write(".\r\n")
	if l := rc.reply(); !strings.HasPrefix(l, "250") {
		t.Fatalf("a slow but steady upload got %q", l)
	}
	if got := e.standin.WaitMessages(1, 10*time.Second); len(got) != 1 {
		t.Fatalf("stand-in got %d messages", len(got))
	}
}

// A failure inside DATA (here a line the relay cannot take) ends the
// connection after the reply, whatever follows.
func TestFailureInsideDataClosesTheConnection(t *testing.T) {
	e := newEnv(t, "[listen]\naddr = \"127.0.0.1:0\"\nmax_message_size = \"64KiB\"\n")
	rc := dialRaw(t, e.addr())
	rc.startData("friend@example.com")
	// A little over the limit (64 KiB less the 8 KiB kept for added
	// headers), then what looks like commands: what follows the failure is
	// never read, however little of it there is.
	body := "Subject: big\r\n\r\n" + strings.Repeat(strings.Repeat("a", 998)+"\r\n", 60)
	io.WriteString(rc.c, body+"MAIL FROM:<demo@icloud.com>\r\nRCPT TO:<smuggled@example.com>\r\nDATA\r\nx\r\n.\r\n")
	replies := rc.rest()
	if len(replies) != 1 || !strings.HasPrefix(replies[0], "552 5.3.4 ") {
		t.Fatalf("got %q; want one 552 and a hang-up", replies)
	}
	time.Sleep(300 * time.Millisecond)
	if n := len(e.standin.Messages()); n != 0 {
		t.Fatalf("%d messages reached the upstream", n)
	}
}

// Clients that only ever send NOOP (or RSET, HELP …) cannot keep a
// legitimate client out for longer than about one timeout.
func TestNOOPLoopsCannotHoldTheSlots(t *testing.T) {
	e := newEnv(t, "[listen]\naddr = \"127.0.0.1:0\"\ntimeout = \"1s\"\nmax_connections = 4\n")
	stop := make(chan struct{})
	defer close(stop)
	for i := 0; i < 4; i++ {
		rc := dialRaw(t, e.addr())
		go func() {
			for {
				select {
				case <-stop:
					return
				case <-time.After(300 * time.Millisecond):
				}
				rc.c.SetWriteDeadline(time.Now().Add(time.Second))
				if _, err := io.WriteString(rc.c, "NOOP\r\n"); err != nil {
					return
				}
				rc.reply()
			}
		}()
	}
	start := time.Now()
	var got string
	for time.Since(start) < 6*time.Second {
		c, err := net.Dial("tcp", e.addr())
		if err != nil {
			t.Fatal(err)
		}
		got = readLine(t, c)
		c.Close()
		if strings.HasPrefix(got, "220") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !strings.HasPrefix(got, "220") {
		t.Fatalf("after %s a legitimate client still gets %q", time.Since(start).Round(time.Millisecond), got)
	}
	if waited := time.Since(start); waited > 3*time.Second {
		t.Errorf("a legitimate client waited %s (timeout 1s)", waited)
	}
}

// A client that trickles a command a byte at a time, never ending the
// line, is dropped about one timeout after it started the command.
func TestTricklingClientIsDropped(t *testing.T) {
	e := newEnv(t, "[listen]\naddr = \"127.0.0.1:0\"\ntimeout = \"1s\"\n")
	rc := dialRaw(t, e.addr())
	closed := make(chan time.Time, 1)
	go func() {
		rc.rest()
		closed <- time.Now()
	}()
	start := time.Now()
	for i := 0; i < 30; i++ {
		select {
		case at := <-closed:
			if d := at.Sub(start); d > 2500*time.Millisecond {
				t.Errorf("dropped after %s, want about 1s", d)
			}
			return
		case <-time.After(200 * time.Millisecond):
		}
		rc.c.SetWriteDeadline(time.Now().Add(time.Second))
		rc.c.Write([]byte("N"))
	}
	t.Fatal("a client trickling one byte every 200ms was never dropped (timeout 1s)")
}

// The same in BDAT: a chunk that trickles in cannot last for ever.
func TestTricklingBDATIsDropped(t *testing.T) {
	e := newEnv(t, "[listen]\naddr = \"127.0.0.1:0\"\ntimeout = \"1s\"\n")
	rc := dialRaw(t, e.addr())
	rc.cmd("EHLO client.test", "250")
	rc.cmd("MAIL FROM:<demo@icloud.com>", "250")
	rc.cmd("RCPT TO:<friend@example.com>", "250")
	rc.write("BDAT 100000 LAST\r\nSubject: t\r\n\r\n")
	closed := make(chan time.Time, 1)
	go func() {
		rc.rest()
		closed <- time.Now()
	}()
	start := time.Now()
	for i := 0; i < 40; i++ {
		select {
		case at := <-closed:
			if d := at.Sub(start); d > 4*time.Second {
				t.Errorf("dropped after %s", d)
			}
			return
		case <-time.After(200 * time.Millisecond):
		}
		rc.c.SetWriteDeadline(time.Now().Add(time.Second))
		rc.c.Write([]byte("x"))
	}
	t.Fatal("a BDAT chunk trickling one byte every 200ms was never dropped (timeout 1s)")
}

func TestOneClientCannotTakeEverySlot(t *testing.T) {
	e := newEnv(t, "[listen]\naddr = \"127.0.0.1:0\"\nmax_connections_per_client = 2\n")
	dialRaw(t, e.addr())
	dialRaw(t, e.addr())
	c, err := net.Dial("tcp", e.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if l := readLine(t, c); !strings.HasPrefix(l, "421 4.7.0 Too many connections from your address") {
		t.Fatalf("third connection from one address got %q", l)
	}
	// Another client address still gets in.
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
	_, port, _ := net.SplitHostPort(e.addr())
	c2, err := d.Dial("tcp", "127.0.0.1:"+port)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if l := readLine(t, c2); !strings.HasPrefix(l, "220") {
		t.Fatalf("another client got %q", l)
	}
}

// A flood of refused connections writes one line and a summary, not a line
// each.
func TestRefusalsAreLoggedOnceAnInterval(t *testing.T) {
	e := newEnv(t, "[listen]\naddr = \"127.0.0.1:0\"\nmax_connections = 1\n")
	dialRaw(t, e.addr())
	for i := 0; i < 200; i++ {
		c, err := net.Dial("tcp", e.addr())
		if err != nil {
			t.Fatal(err)
		}
		readLine(t, c)
		c.Close()
	}
	if n := len(e.logs.lines(map[string]any{"message": "connection refused: too many connections"})); n != 1 {
		t.Fatalf("%d log lines for 200 refusals, want 1 (and a summary at the interval's end)", n)
	}
}
