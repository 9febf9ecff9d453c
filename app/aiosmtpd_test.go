package app_test

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/icloud-relay/icloud-relay/internal/certs"
	"github.com/icloud-relay/icloud-relay/internal/testenv"
)

// aiosmtpd is a running testdata/aiosmtpd_standin.py: an upstream that shares no
// code with the project's stand-in and, unlike it, offers neither
// PIPELINING nor CHUNKING, so the relay talks to it one step at a time.
type aiosmtpd struct {
	starttls, tls int
	caFile        string
	user, pw      string
	out           string // where it writes what it takes
}

func startAiosmtpd(t *testing.T) *aiosmtpd {
	t.Helper()
	python := ""
	for _, p := range []string{"/usr/bin/python3", "python3"} {
		if exec.Command(p, "-c", "import aiosmtpd").Run() == nil {
			python = p
			break
		}
	}
	if python == "" {
		testenv.Skip(t, "needs Python's aiosmtpd (Debian: python3-aiosmtpd)")
	}
	dir := t.TempDir()
	ca, err := certs.NewCA("aiosmtpd test CA")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	a := &aiosmtpd{caFile: filepath.Join(dir, "ca.pem"), user: "sender@aiosmtpd.test", pw: "aiosmtpd-pass-0042", out: filepath.Join(dir, "out")}
	if err := certs.WriteKeyPair(leaf, filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(a.caFile, ca.PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	os.Mkdir(a.out, 0o700)
	a.starttls, a.tls = freePort(t), freePort(t)
	cmd := exec.Command(python, filepath.Join("testdata", "aiosmtpd_standin.py"), fmt.Sprint(a.starttls), fmt.Sprint(a.tls),
		filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"), a.user, a.pw, a.out)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	ready := make(chan bool, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		ready <- strings.TrimSpace(line) == "ready"
	}()
	select {
	case ok := <-ready:
		if !ok {
			t.Fatal("aiosmtpd did not start")
		}
	case <-time.After(20 * time.Second):
		t.Fatal("aiosmtpd did not start in 20 s")
	}
	return a
}

func freePort(t *testing.T) int {
	t.Helper()
	_, port, _ := net.SplitHostPort(freeAddr(t))
	n, _ := strconv.Atoi(port)
	return n
}

// taken returns what the server has taken, in order.
func (a *aiosmtpd) taken() []string {
	names, _ := filepath.Glob(filepath.Join(a.out, "*.eml"))
	sort.Slice(names, func(i, j int) bool {
		var x, y int
		fmt.Sscan(strings.TrimSuffix(filepath.Base(names[i]), ".eml"), &x)
		fmt.Sscan(strings.TrimSuffix(filepath.Base(names[j]), ".eml"), &y)
		return x < y
	})
	var out []string
	for _, n := range names {
		b, _ := os.ReadFile(n)
		out = append(out, string(b))
	}
	return out
}

// The relay against a server that is not its own stand-in, one step at a
// time (no PIPELINING, no CHUNKING): a message is delivered within its
// sync window, a refusal at RCPT reaches the client as the server's 550,
// dot-stuffed data arrives as it was sent, and a burst from several
// clients arrives whole, each message once.
func TestTheRelayWorksWithAServerWithoutPipelining(t *testing.T) {
	a := startAiosmtpd(t)
	e := &env{t: t, dir: t.TempDir(), logs: &syncBuffer{}}
	e.cfg = e.config(fmt.Sprintf(`[upstream]
host = "127.0.0.1"
starttls_port = %d
tls_port = %d
ca_file = %q
username = %q
password = %q
connect_timeout = "5s"
timeout = "5s"
[queue]
dir = %q
[delivery]
sync_window = "10s"
retry_min = "200ms"
retry_max = "1s"
[status]
addr = ""
`, a.starttls, a.tls, a.caFile, a.user, a.pw, filepath.Join(e.dir, "queue")))
	e.start()

	dotted := "Subject: dots\r\n\r\n.a line that starts with a dot\r\n..two\r\nlast\r\n"
	reply, err := send(e.addr(), a.user, []string{"friend@example.com"}, dotted)
	if err != nil || !strings.Contains(reply, "Delivered to iCloud") {
		t.Fatalf("a lone message: %q %v, want delivered within its window", reply, err)
	}
	got := a.taken()
	if len(got) != 1 || !strings.Contains(got[0], "X-Envelope-To: friend@example.com\r\n") ||
		!strings.HasSuffix(got[0], "\r\n.a line that starts with a dot\r\n..two\r\nlast\r\n") {
		t.Fatalf("the server took %q", got)
	}
	time.Sleep(1100 * time.Millisecond) // past bulk_gap: the next one is lone too
	if _, err := send(e.addr(), a.user, []string{"nobody@example.com"}, message("refused", "x\r\n")); err == nil ||
		!strings.Contains(err.Error(), "550") || !strings.Contains(err.Error(), "no such user") {
		t.Fatalf("a refused recipient: %v, want the server's 550", err)
	}

	const clients, each = 4, 5
	var wg sync.WaitGroup
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				if _, err := send(e.addr(), a.user, []string{"friend@example.com"}, message(fmt.Sprintf("burst-%d-%d", c, i), "x\r\n")); err != nil {
					t.Errorf("burst message %d of client %d: %v", i, c, err)
				}
			}
		}()
	}
	wg.Wait()
	waitFor(t, 20*time.Second, func() bool { return len(a.taken()) == 1+clients*each })
	seen := map[string]int{}
	for _, m := range a.taken()[1:] {
		for _, line := range strings.Split(m, "\r\n") {
			if s, ok := strings.CutPrefix(line, "Subject: "); ok {
				seen[s]++
			}
		}
	}
	for c := range clients {
		for i := range each {
			if s := fmt.Sprintf("burst-%d-%d", c, i); seen[s] != 1 {
				t.Errorf("%s arrived %d times", s, seen[s])
			}
		}
	}
}
