package app_test

import (
	"crypto/tls"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// dialFrom connects to addr's port on 127.0.0.1 from another loopback
// address, which the relay treats as another machine; with tlsConfig it
// starts TLS.
func dialFrom(t *testing.T, from, addr string, tlsConfig ...*tls.Config) *smtp.Client {
	t.Helper()
	_, port, _ := net.SplitHostPort(addr)
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 5 * time.Second}
	conn, err := d.Dial("tcp", "127.0.0.1:"+port)
	if err != nil {
		t.Fatal(err)
	}
	var c *smtp.Client
	if len(tlsConfig) > 0 {
		if c, err = smtp.NewClientStartTLS(conn, tlsConfig[0]); err != nil {
			t.Fatal(err)
		}
	} else {
		c = smtp.NewClient(conn)
		if err := c.Hello("client.test"); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { c.Close() })
	return c
}

const officeConfig = "[listen]\naddr = \"0.0.0.0:0\"\nallow = [\"127.0.0.0/8\"]\n[[listen.users]]\nusername = \"office\"\npassword = \"office-pass\"\n"

// Another machine may log in only over TLS: a password never crosses a
// network in clear text.
func TestLoginsFromOtherMachinesNeedTLS(t *testing.T) {
	e := newEnv(t, officeConfig)
	c := dialFrom(t, "127.0.0.2", e.addr())
	if ok, _ := c.Extension("AUTH"); ok {
		t.Fatal("AUTH offered in clear text to another machine")
	}
	err := c.Auth(sasl.NewPlainClient("", "office", "office-pass"))
	if se, ok := err.(*smtp.SMTPError); !ok || se.Code != 538 {
		t.Fatalf("a login in clear text from another machine: %v, want 538", err)
	}
	c = dialFrom(t, "127.0.0.2", e.addr(), &tls.Config{InsecureSkipVerify: true})
	if err := c.Auth(sasl.NewPlainClient("", "office", "office-pass")); err != nil {
		t.Fatalf("a login over TLS from another machine: %v", err)
	}
	// This machine itself may still log in without TLS (old local clients).
	local := dialFrom(t, "127.0.0.1", e.addr())
	if err := local.Auth(sasl.NewPlainClient("", "office", "office-pass")); err != nil {
		t.Fatalf("a local login: %v", err)
	}
}

// The README's scanner recipe (allow = your LAN) keeps this machine's own
// tools working: 127.0.0.1 is always allowed.
func TestAllowListKeepsThisMachineIn(t *testing.T) {
	e := newEnv(t, strings.Replace(officeConfig, `allow = ["127.0.0.0/8"]`, `allow = ["192.168.1.0/24"]`, 1))
	c := dialFrom(t, "127.0.0.1", e.addr())
	if err := c.Auth(sasl.NewPlainClient("", "office", "office-pass")); err != nil {
		t.Fatal(err)
	}
	if _, err := sendOn(c, "demo@icloud.com", []string{"friend@example.com"}, message("local", "x\r\n")); err != nil {
		t.Fatalf("this machine cannot send with allow = your LAN: %v", err)
	}
}
