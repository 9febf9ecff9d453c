package relay

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/icloud-relay/icloud-relay/internal/certs"
)

// countingConn counts the writes that reach the socket.
type countingConn struct {
	net.Conn
	writes atomic.Int32
}

func (c *countingConn) Write(b []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(b)
}

// loopbackPair returns both ends of a real TCP connection, the server end
// wrapped as the listener wraps it.
func loopbackPair(t *testing.T) (*clientConn, *countingConn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	client.SetDeadline(time.Now().Add(10 * time.Second))
	counted := &countingConn{Conn: server}
	srv := &Server{log: zerolog.Nop(), perClient: map[netip.Prefix]int{}}
	return &clientConn{Conn: counted, srv: srv}, counted, client
}

func TestRepliesGoOutInOneWriteWhenTheServerReads(t *testing.T) {
	c, counted, client := loopbackPair(t)
	for _, line := range []string{"250-relay\r\n", "250-PIPELINING\r\n", "250 SIZE 100\r\n"} {
		if _, err := c.Write([]byte(line)); err != nil {
			t.Fatal(err)
		}
	}
	if n := counted.writes.Load(); n != 0 {
		t.Fatalf("%d writes before the server read", n)
	}
	go client.Write([]byte("MAIL FROM:<a@b>\r\n"))
	if _, err := c.Read(make([]byte, 64)); err != nil {
		t.Fatal(err)
	}
	if n := counted.writes.Load(); n != 1 {
		t.Fatalf("%d writes for a three-line reply, want 1", n)
	}
	want := "250-relay\r\n250-PIPELINING\r\n250 SIZE 100\r\n"
	got := make([]byte, len(want))
	if _, err := io.ReadFull(client, got); err != nil || string(got) != want {
		t.Fatalf("client read %q, %v", got, err)
	}
	// A reply followed by a close (QUIT) still arrives.
	c.Write([]byte("221 bye\r\n"))
	c.Close()
	if rest, _ := io.ReadAll(client); string(rest) != "221 bye\r\n" {
		t.Fatalf("after close the client read %q", rest)
	}
}

// crypto/tls sets an expired write deadline when it closes; what was held
// must have gone out before.
func TestHeldRepliesSurviveTLSClose(t *testing.T) {
	c, _, client := loopbackPair(t)
	ca, err := certs.NewCA("test CA")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.Issue("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca.PEM)
	go func() {
		s := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}})
		s.Write([]byte("221 bye\r\n"))
		s.Close()
	}()
	tc := tls.Client(client, &tls.Config{RootCAs: roots, ServerName: "127.0.0.1"})
	if got, err := io.ReadAll(tc); string(got) != "221 bye\r\n" {
		t.Fatalf("client read %q, %v", got, err)
	}
}
