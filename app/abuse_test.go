package app_test

import (
	"bufio"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

func readLine(t *testing.T, c net.Conn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, _ := bufio.NewReader(c).ReadString('\n')
	return line
}

func TestTooManyConnections(t *testing.T) {
	e := newEnv(t, "[listen]\naddr = \"127.0.0.1:0\"\nmax_connections = 2\n")
	var open []net.Conn
	for i := 0; i < 2; i++ {
		c, err := net.Dial("tcp", e.addr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if l := readLine(t, c); !strings.HasPrefix(l, "220 ") {
			t.Fatalf("connection %d: %q", i, l)
		}
		open = append(open, c)
	}
	c, err := net.Dial("tcp", e.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if l := readLine(t, c); !strings.HasPrefix(l, "421 4.7.0 ") {
		t.Fatalf("third connection got %q, want 421", l)
	}
	if l := e.logs.lines(map[string]any{"stage": "accept", "max_connections": 2}); len(l) != 1 {
		t.Fatalf("log: %v", l)
	}
	// A closed connection frees its place.
	open[0].Close()
	waitFor(t, 5*time.Second, func() bool {
		c, err := net.Dial("tcp", e.addr())
		if err != nil {
			return false
		}
		defer c.Close()
		return strings.HasPrefix(readLine(t, c), "220 ")
	})
}

func TestLocalLoginsAreRateLimited(t *testing.T) {
	e := newEnv(t, "[listen]\naddr = \"127.0.0.1:0\"\n[[listen.users]]\nusername = \"office\"\npassword = \"office-pass\"\n")
	login := func(pass string) error {
		c, err := smtp.Dial(e.addr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.Auth(sasl.NewPlainClient("", "office", pass))
	}
	for i := 0; i < 5; i++ {
		if err := login("guess"); err == nil {
			t.Fatal("wrong password accepted")
		}
	}
	err := login("office-pass")
	if se, ok := err.(*smtp.SMTPError); !ok || se.Code != 454 {
		t.Fatalf("after 5 failures even the right password must wait: %v", err)
	}
}

func TestIdleClientTimesOutAndLongLinesAreRefused(t *testing.T) {
	e := newEnv(t, "[listen]\naddr = \"127.0.0.1:0\"\ntimeout = \"300ms\"\n")
	c, err := net.Dial("tcp", e.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	r.ReadString('\n') // greeting
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if l, _ := r.ReadString('\n'); !strings.HasPrefix(l, "421 ") {
		t.Fatalf("idle client got %q, want 421", l)
	}
	waitFor(t, 5*time.Second, func() bool {
		return len(e.logs.lines(map[string]any{"message": "client connection timed out; closed"})) == 1
	})

	c2, err := net.Dial("tcp", e.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	r2 := bufio.NewReader(c2)
	r2.ReadString('\n')
	c2.Write([]byte("EHLO " + strings.Repeat("x", 10000) + "\r\n"))
	c2.SetReadDeadline(time.Now().Add(10 * time.Second))
	if l, _ := r2.ReadString('\n'); !strings.HasPrefix(l, "500 5.4.0") {
		t.Fatalf("over-long line got %q, want 500 5.4.0", l)
	}
}

func TestOversizedMessageIsRefusedWhileStreamingWithBoundedMemory(t *testing.T) {
	e := newEnv(t, "[listen]\naddr = \"127.0.0.1:0\"\nmax_message_size = \"1MiB\"\n")
	c, err := smtp.Dial(e.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Mail("demo@icloud.com", nil)
	c.Rcpt("friend@example.com", nil)
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	line := strings.Repeat("y", 998) + "\r\n"
	for i := 0; i < 8<<10; i++ { // 8 MiB
		if _, err := w.Write([]byte(line)); err != nil {
			break
		}
	}
	err = w.Close()
	if se, ok := err.(*smtp.SMTPError); !ok || se.Code != 552 {
		t.Fatalf("got %v, want 552", err)
	}
	if l := e.logs.lines(map[string]any{"message": "message refused: too large"}); len(l) != 1 {
		t.Fatalf("log: %v", l)
	}
}
