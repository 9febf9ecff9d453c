package upstream_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/icloud-relay/icloud-relay/upstream"
)

const (
	hostileUser = "me@icloud.com"
	hostilePass = "hostile-test-pass-7777"
)

// hostile587 is a raw server on the STARTTLS port that records every byte
// the client sends before a TLS handshake completes, and tries to lure it
// into sending its login in clear text.
type hostile587 struct {
	ehlo     []string // EHLO reply lines (without the code)
	starttls string   // reply to STARTTLS ("" means 220 and a handshake)
	tlsMax   uint16   // the handshake's highest version (0: any)
	cert     tls.Certificate
	roots    *x509.CertPool
	port     int

	mu    sync.Mutex
	clear bytes.Buffer // what came before TLS
}

func startHostile(t *testing.T, h *hostile587) {
	t.Helper()
	h.cert, h.roots = testTLS(t, "hostile test CA")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	h.port = ln.Addr().(*net.TCPAddr).Port
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go h.serve(c)
		}
	}()
}

func (h *hostile587) serve(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	say := func(s string) { c.Write([]byte(s + "\r\n")) }
	say("220 hostile ESMTP")
	for {
		line, err := r.ReadString('\n')
		h.mu.Lock()
		h.clear.WriteString(line)
		h.mu.Unlock()
		if err != nil {
			return
		}
		verb := strings.ToUpper(strings.Fields(line + " x")[0])
		switch verb {
		case "EHLO":
			for i, l := range h.ehlo {
				sep := "-"
				if i == len(h.ehlo)-1 {
					sep = " "
				}
				say("250" + sep + l)
			}
		case "STARTTLS":
			if h.starttls != "" {
				say(h.starttls)
				continue
			}
			say("220 go ahead")
			tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{h.cert}, MaxVersion: h.tlsMax, MinVersion: tls.VersionTLS10})
			if tc.Handshake() != nil {
				return
			}
			// Past TLS: a polite server (the bytes no longer count).
			tr := bufio.NewReader(tc)
			for {
				l, err := tr.ReadString('\n')
				if err != nil {
					return
				}
				switch strings.ToUpper(strings.Fields(l + " x")[0]) {
				case "EHLO":
					tc.Write([]byte("250-hostile\r\n250 AUTH PLAIN LOGIN\r\n"))
				case "AUTH":
					tc.Write([]byte("235 2.7.0 ok\r\n"))
				case "DATA":
					tc.Write([]byte("354 go ahead\r\n"))
					for {
						if l, err := tr.ReadString('\n'); err != nil || l == ".\r\n" {
							break
						}
					}
					tc.Write([]byte("250 2.0.0 queued\r\n"))
				case "QUIT":
					tc.Write([]byte("221 bye\r\n"))
					return
				default:
					tc.Write([]byte("250 ok\r\n"))
				}
			}
		case "AUTH":
			say("235 2.7.0 thanks for the password")
		case "QUIT":
			say("221 bye")
			return
		default:
			say("250 ok")
		}
	}
}

// No server can get the password (or a message) before verified TLS:
// whatever the 587 side offers or answers, the bytes the client sends
// before the handshake hold no AUTH, no form of the credentials, no MAIL.
func TestNothingSecretGoesOutBeforeTLS(t *testing.T) {
	plain := base64.StdEncoding.EncodeToString([]byte("\x00" + hostileUser + "\x00" + hostilePass))
	for _, tc := range []struct {
		name      string
		h         *hostile587
		delivered bool
	}{
		{"AUTH offered before STARTTLS", &hostile587{ehlo: []string{"hostile", "AUTH PLAIN LOGIN", "STARTTLS", "SIZE 1000000"}}, true},
		{"STARTTLS stripped", &hostile587{ehlo: []string{"hostile", "AUTH PLAIN LOGIN", "SIZE 1000000"}}, false},
		{"STARTTLS refused with 454", &hostile587{ehlo: []string{"hostile", "AUTH PLAIN LOGIN", "STARTTLS"}, starttls: "454 4.7.0 TLS not available"}, false},
		{"only TLS 1.1", &hostile587{ehlo: []string{"hostile", "AUTH PLAIN LOGIN", "STARTTLS"}, tlsMax: tls.VersionTLS11}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := tc.h
			startHostile(t, h)
			closed, _ := net.Listen("tcp", "127.0.0.1:0")
			refusing := closed.Addr().(*net.TCPAddr).Port
			closed.Close() // 465 refuses: no way around 587
			c := upstream.New(upstream.Config{
				Host: "127.0.0.1", StartTLSPort: h.port, TLSPort: refusing, Username: hostileUser, Password: hostilePass,
				RootCAs: h.roots, HeloName: "relay.test", ConnectTimeout: 2 * time.Second, Timeout: 2 * time.Second,
				ReprobeInterval: time.Hour, MaxIdle: 1, IdleTimeout: time.Minute, MaxMessagesPerConnection: 100,
			})
			defer c.CloseIdle()
			_, err := c.Send(context.Background(), &upstream.Message{From: hostileUser, To: []string{"a@example.com"}, Body: strings.NewReader("Subject: s\r\n\r\nx\r\n")})
			if tc.delivered && err != nil {
				t.Fatalf("a server that offers STARTTLS after all: %v", err)
			}
			if !tc.delivered && err == nil {
				t.Fatal("delivered without verified TLS 1.2+")
			}
			h.mu.Lock()
			clear := h.clear.String()
			h.mu.Unlock()
			for _, bad := range []string{"AUTH", "MAIL", hostilePass, plain, base64.StdEncoding.EncodeToString([]byte(hostilePass)), base64.StdEncoding.EncodeToString([]byte(hostileUser))} {
				if strings.Contains(strings.ToUpper(clear), strings.ToUpper(bad)) {
					t.Fatalf("%q went out before TLS:\n%s", bad, clear)
				}
			}
			if !strings.Contains(clear, "EHLO") {
				t.Fatalf("the client never spoke to the server: %q", clear)
			}
		})
	}
}
