package upstream_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/icloud-relay/icloud-relay/internal/certs"
	"github.com/icloud-relay/icloud-relay/upstream"
	"github.com/icloud-relay/icloud-relay/upstream/upstreamtest"
)

func standin(t testing.TB) *upstreamtest.Server {
	t.Helper()
	s, err := upstreamtest.Start(upstreamtest.Options{Aliases: []string{"alias@icloud.com"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func client(t testing.TB, s *upstreamtest.Server, mod ...func(*upstream.Config)) *upstream.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(s.CA.PEM)
	cfg := upstream.Config{
		Host: s.Host, StartTLSPort: s.StartTLSPort, TLSPort: s.TLSPort,
		Username: s.Username(), Password: s.Password(), RootCAs: pool, HeloName: "relay-host.example",
		ConnectTimeout: 2 * time.Second, Timeout: time.Second, ReprobeInterval: time.Hour,
	}
	for _, m := range mod {
		m(&cfg)
	}
	return upstream.New(cfg)
}

const body = "From: <demo@icloud.com>\r\nTo: <friend@example.com>\r\nSubject: t\r\n\r\nhello\r\n.dot line\r\n"

func msg(from string, to ...string) *upstream.Message {
	if len(to) == 0 {
		to = []string{"friend@example.com"}
	}
	return &upstream.Message{From: from, To: to, Size: int64(len(body)), Body: strings.NewReader(body)}
}

func TestSendOverStartTLS(t *testing.T) {
	s := standin(t)
	c := client(t, s)
	res, err := c.Send(context.Background(), msg(s.Username()))
	if err != nil {
		t.Fatal(err)
	}
	got := s.Messages()
	if len(got) != 1 || string(got[0].Data) != body || got[0].Port != s.StartTLSPort || res.Port != s.StartTLSPort {
		t.Fatalf("got %+v", got)
	}
	if h := s.HeloNames(); len(h) != 1 || h[0] != "relay-host.example" {
		t.Fatalf("EHLO after TLS used %v, want the configured name", h)
	}
}

// The per-stage fault table of issue #2/#3: each fault yields the right
// stage, permanence, code and remedy.
func TestFaultsAreClassifiedByStage(t *testing.T) {
	e := func(code int, ec smtp.EnhancedCode, text string) *smtp.SMTPError {
		return &smtp.SMTPError{Code: code, EnhancedCode: ec, Message: text}
	}
	cases := []struct {
		name   string
		setup  func(*upstreamtest.Server)
		from   string
		stage  upstream.Stage
		class  upstream.Class
		code   int
		remedy string
		noAuth bool // the password must not have been sent
	}{
		{name: "both ports refused", setup: func(s *upstreamtest.Server) {
			s.SetPort(s.StartTLSPort, upstreamtest.PortRefused)
			s.SetPort(s.TLSPort, upstreamtest.PortRefused)
		}, stage: upstream.StageConnect, class: upstream.Unreachable, remedy: "Neither port", noAuth: true},
		{name: "both ports blackholed", setup: func(s *upstreamtest.Server) {
			s.SetPort(s.StartTLSPort, upstreamtest.PortBlackhole)
			s.SetPort(s.TLSPort, upstreamtest.PortBlackhole)
		}, stage: upstream.StageGreeting, class: upstream.Unreachable, remedy: "Neither port", noAuth: true},
		{name: "bad certificate", setup: func(s *upstreamtest.Server) { s.SetFaults(upstreamtest.Faults{BadCert: true}) },
			stage: upstream.StageTLS, class: upstream.Unreachable, remedy: "intercepting TLS", noAuth: true},
		{name: "certificate for another name", setup: func(s *upstreamtest.Server) { s.SetFaults(upstreamtest.Faults{WrongName: true}) },
			stage: upstream.StageTLS, class: upstream.Unreachable, remedy: "upstream.host is probably wrong", noAuth: true},
		{name: "421 at greeting", setup: func(s *upstreamtest.Server) {
			s.SetFaults(upstreamtest.Faults{Greeting: e(421, smtp.EnhancedCode{4, 3, 2}, "Service not available")})
		}, stage: upstream.StageGreeting, class: upstream.Unreachable, code: 421, remedy: "busy or maintenance", noAuth: true},
		{name: "auth refused", setup: func(s *upstreamtest.Server) { s.SetFaults(upstreamtest.Faults{AuthFail: true}) },
			stage: upstream.StageAuth, class: upstream.PauseAccount, code: 535, remedy: "app-specific password"},
		{name: "too many logins", setup: func(s *upstreamtest.Server) {
			s.SetFaults(upstreamtest.Faults{Auth: e(454, smtp.EnhancedCode{4, 7, 0}, "Too many login attempts")})
		}, stage: upstream.StageAuth, class: upstream.Throttled, code: 454, remedy: "retries by itself"},
		{name: "sender not allowed", from: "stranger@example.com",
			stage: upstream.StageMail, class: upstream.Permanent, code: 553, remedy: "aliases"},
		{name: "4xx at MAIL", setup: func(s *upstreamtest.Server) {
			s.SetFaults(upstreamtest.Faults{Mail: e(451, smtp.EnhancedCode{4, 3, 0}, "try later")})
		}, stage: upstream.StageMail, class: upstream.Retry, code: 451, remedy: "retries by itself"},
		{name: "recipient refused", setup: func(s *upstreamtest.Server) {
			s.SetFaults(upstreamtest.Faults{Rcpt: map[string]*smtp.SMTPError{"friend@example.com": e(550, smtp.EnhancedCode{5, 1, 1}, "no such user")}})
		}, stage: upstream.StageRcpt, class: upstream.Permanent, code: 550, remedy: "recipient"},
		{name: "4xx at DATA", setup: func(s *upstreamtest.Server) {
			s.SetFaults(upstreamtest.Faults{Data: e(451, smtp.EnhancedCode{4, 3, 0}, "local error")})
		}, stage: upstream.StageData, class: upstream.Retry, code: 451, remedy: "retries by itself"},
		{name: "too large", setup: func(s *upstreamtest.Server) {
			s.SetFaults(upstreamtest.Faults{Data: e(552, smtp.EnhancedCode{5, 3, 4}, "too big")})
		}, stage: upstream.StageData, class: upstream.Permanent, code: 552, remedy: "larger than iCloud accepts"},
		{name: "dropped after DATA", setup: func(s *upstreamtest.Server) { s.SetFaults(upstreamtest.Faults{DropAfterData: true}) },
			stage: upstream.StageData, class: upstream.Retry},
		{name: "closed mid-DATA", setup: func(s *upstreamtest.Server) { s.SetFaults(upstreamtest.Faults{CloseMidData: true}) },
			stage: upstream.StageData, class: upstream.Retry},
		{name: "daily limit at MAIL (5xx, Apple's words)", setup: func(s *upstreamtest.Server) {
			s.SetFaults(upstreamtest.Faults{Mail: e(550, smtp.EnhancedCode{5, 7, 1}, "<demo@icloud.com>: You have exceeded your daily sending limit. Please try again later.")})
		}, stage: upstream.StageMail, class: upstream.HoldDailyLimit, code: 550, remedy: "daily sending limit"},
		{name: "daily limit at RCPT (5xx)", setup: func(s *upstreamtest.Server) {
			s.SetFaults(upstreamtest.Faults{Rcpt: map[string]*smtp.SMTPError{"friend@example.com": e(550, smtp.EnhancedCode{5, 7, 1}, "You have exceeded your daily sending limit. Please try again later.")}})
		}, stage: upstream.StageRcpt, class: upstream.HoldDailyLimit, code: 550, remedy: "daily sending limit"},
		{name: "daily limit at DATA (4xx)", setup: func(s *upstreamtest.Server) {
			s.SetFaults(upstreamtest.Faults{Data: e(451, smtp.EnhancedCode{4, 7, 1}, "Daily sending quota exceeded")})
		}, stage: upstream.StageData, class: upstream.HoldDailyLimit, code: 451, remedy: "daily sending limit"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := standin(t)
			if tc.setup != nil {
				tc.setup(s)
			}
			from := tc.from
			if from == "" {
				from = s.Username()
			}
			_, err := client(t, s).Send(context.Background(), msg(from))
			var ue *upstream.Error
			if !errors.As(err, &ue) {
				t.Fatalf("want *upstream.Error, got %T %v", err, err)
			}
			if ue.Stage != tc.stage || ue.Class != tc.class || (tc.code != 0 && ue.Code != tc.code) {
				t.Fatalf("got stage=%s class=%s code=%d (%v); want stage=%s class=%s code=%d",
					ue.Stage, ue.Class, ue.Code, ue, tc.stage, tc.class, tc.code)
			}
			if ue.Remedy == "" || !strings.Contains(ue.Remedy, tc.remedy) {
				t.Fatalf("remedy %q lacks %q", ue.Remedy, tc.remedy)
			}
			if tc.noAuth && s.AuthAttempts() != 0 {
				t.Fatalf("password was sent (%d AUTH attempts) although the connection failed before login", s.AuthAttempts())
			}
			if strings.Contains(ue.Error(), s.Password()) {
				t.Fatal("error mentions the password")
			}
		})
	}
}

func TestFallbackTo465WhenStartTLSPortRefused(t *testing.T) {
	s := standin(t)
	s.SetPort(s.StartTLSPort, upstreamtest.PortRefused)
	c := client(t, s)
	res, err := c.Send(context.Background(), msg(s.Username()))
	if err != nil {
		t.Fatal(err)
	}
	if res.Port != s.TLSPort || c.Preferred() != s.TLSPort {
		t.Fatalf("delivered on %d, preferred now %d; want %d", res.Port, c.Preferred(), s.TLSPort)
	}
}

func TestBlackholed587FallsBackAndIsRemembered(t *testing.T) {
	s := standin(t)
	s.SetPort(s.StartTLSPort, upstreamtest.PortBlackhole)
	var events []upstream.Event
	c := client(t, s, func(cfg *upstream.Config) {
		cfg.Trace = func(e upstream.Event) { events = append(events, e) }
	})
	if _, err := c.Send(context.Background(), msg(s.Username())); err != nil {
		t.Fatal(err)
	}
	if got := s.Messages(); len(got) != 1 || got[0].Port != s.TLSPort {
		t.Fatalf("got %+v", got)
	}
	// The next message goes straight to 465: no connection to 587 at all.
	events = nil
	if _, err := c.Send(context.Background(), msg(s.Username())); err != nil {
		t.Fatal(err)
	}
	for _, e := range events {
		if e.Port == s.StartTLSPort {
			t.Fatalf("second delivery touched the blackholed port: %+v", e)
		}
	}
	if got := s.Messages(); len(got) != 2 || got[1].Port != s.TLSPort {
		t.Fatalf("got %+v", got)
	}
}

func TestReprobesStartTLSPortAfterInterval(t *testing.T) {
	s := standin(t)
	s.SetPort(s.StartTLSPort, upstreamtest.PortRefused)
	c := client(t, s, func(cfg *upstream.Config) { cfg.ReprobeInterval = time.Nanosecond })
	if _, err := c.Send(context.Background(), msg(s.Username())); err != nil {
		t.Fatal(err)
	}
	s.SetPort(s.StartTLSPort, upstreamtest.PortUp)
	res, err := c.Send(context.Background(), msg(s.Username()))
	if err != nil || res.Port != s.StartTLSPort {
		t.Fatalf("after the reprobe interval want port %d, got %+v %v", s.StartTLSPort, res, err)
	}
}

func TestNoFallbackAfterAuthRefusal(t *testing.T) {
	s := standin(t)
	s.SetFaults(upstreamtest.Faults{AuthFail: true})
	_, err := client(t, s).Send(context.Background(), msg(s.Username()))
	if err == nil || s.AuthAttempts() != 1 {
		t.Fatalf("want one login attempt only (465 would repeat the refusal), got %d: %v", s.AuthAttempts(), err)
	}
}

func TestPartialRecipientRefusal(t *testing.T) {
	s := standin(t)
	s.SetFaults(upstreamtest.Faults{Rcpt: map[string]*smtp.SMTPError{"bad@example.com": {Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}}})
	res, err := client(t, s).Send(context.Background(), msg(s.Username(), "good@example.com", "bad@example.com"))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Refused) != 1 || res.Refused["bad@example.com"].Code != 550 {
		t.Fatalf("refused %+v", res.Refused)
	}
	if got := s.Messages(); len(got) != 1 || len(got[0].To) != 1 || got[0].To[0] != "good@example.com" {
		t.Fatalf("got %+v", got)
	}
}

func TestSizeIsAnnouncedInMailFrom(t *testing.T) {
	s, err := upstreamtest.Start(upstreamtest.Options{MaxSize: 10})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_, err = client(t, s).Send(context.Background(), msg(s.Username()))
	var ue *upstream.Error
	if !errors.As(err, &ue) || ue.Stage != upstream.StageMail || ue.Code != 552 {
		t.Fatalf("an oversized message must be refused at MAIL (SIZE=), before upload: %v", err)
	}
}

func TestHungServerDoesNotHangTheClient(t *testing.T) {
	s := standin(t)
	s.SetFaults(upstreamtest.Faults{Delay: time.Hour})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := client(t, s).Send(ctx, msg(s.Username()))
	var ue *upstream.Error
	if !errors.As(err, &ue) || ue.Stage != upstream.StageMail || ue.Class != upstream.Retry || ctx.Err() != nil {
		t.Fatalf("want a timeout at MAIL from the per-read timeout, got %v (ctx %v)", err, ctx.Err())
	}
}

func TestProbe(t *testing.T) {
	s := standin(t)
	c := client(t, s)
	if err := c.Probe(context.Background()); err != nil {
		t.Fatal(err)
	}
	if s.AuthAttempts() != 0 {
		t.Fatal("a probe must not log in")
	}
	s.SetPort(s.StartTLSPort, upstreamtest.PortRefused)
	s.SetPort(s.TLSPort, upstreamtest.PortRefused)
	if err := c.Probe(context.Background()); err == nil {
		t.Fatal("probe of a down server succeeded")
	}
}

// A failed lookup is stage dns and unreachable, and its advice tells a
// name that does not exist (a typo in upstream.host) from a name server
// that fails. The lookups ask a stand-in name server on loopback.
func TestDNSFailuresAreTold(t *testing.T) {
	s := standin(t)
	for _, tc := range []struct {
		answer upstreamtest.DNSAnswer
		advice string
	}{
		{upstreamtest.DNSNotFound, "does not exist: check upstream.host"},
		{upstreamtest.DNSFailure, "name server this computer uses does not answer"},
		{upstreamtest.DNSSilent, "name server this computer uses does not answer"},
	} {
		dns, err := upstreamtest.NewDNS(tc.answer)
		if err != nil {
			t.Fatal(err)
		}
		defer dns.Close()
		c := client(t, s, func(cfg *upstream.Config) {
			cfg.Host, cfg.Resolver, cfg.ConnectTimeout = "smtp.mail.me.test", dns.Resolver(), 2*time.Second
		})
		_, err = c.Send(context.Background(), msg(s.Username()))
		var ue *upstream.Error
		if !errors.As(err, &ue) || ue.Stage != upstream.StageDNS || ue.Class != upstream.Unreachable || !strings.Contains(ue.Remedy, tc.advice) {
			t.Fatalf("answer %d: got %v (class %s, remedy %q), want stage dns, unreachable, %q", tc.answer, err, ue.Class, ue.Remedy, tc.advice)
		}
	}
	// And a name it resolves is used: the stand-in name server is honest.
	dns, err := upstreamtest.NewDNS(upstreamtest.DNSLoopback)
	if err != nil {
		t.Fatal(err)
	}
	defer dns.Close()
	c := client(t, s, func(cfg *upstream.Config) { cfg.Host, cfg.Resolver = "localhost.test", dns.Resolver() })
	if _, err := c.Send(context.Background(), msg(s.Username())); err == nil || !strings.Contains(err.Error(), "certificate is not valid for localhost.test") {
		t.Fatalf("a resolved name must reach the server (and fail its certificate check), got %v", err)
	}
}

func TestConnectionReuse(t *testing.T) {
	s := standin(t)
	c := client(t, s, func(cfg *upstream.Config) {
		cfg.MaxIdle, cfg.IdleTimeout, cfg.MaxMessagesPerConnection = 2, time.Minute, 4
	})
	defer c.CloseIdle()
	for i := 0; i < 10; i++ {
		if _, err := c.Send(context.Background(), msg(s.Username())); err != nil {
			t.Fatal(err)
		}
	}
	if n := s.Logins(); n != 3 || c.Logins() != 3 {
		t.Fatalf("10 messages at 4 per connection: %d logins at the server, %d counted; want 3", n, c.Logins())
	}
	// A refusal leaves the connection usable; a 421 does not.
	c2 := client(t, s, func(cfg *upstream.Config) {
		cfg.MaxIdle, cfg.IdleTimeout, cfg.MaxMessagesPerConnection = 1, time.Minute, 100
	})
	defer c2.CloseIdle()
	c2.Send(context.Background(), msg(s.Username())) // login 4
	s.SetFaults(upstreamtest.Faults{Rcpt: map[string]*smtp.SMTPError{"friend@example.com": {Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no"}}})
	c2.Send(context.Background(), msg(s.Username()))
	s.SetFaults(upstreamtest.Faults{})
	if _, err := c2.Send(context.Background(), msg(s.Username())); err != nil || s.Logins() != 4 {
		t.Fatalf("after a refusal: %v, %d logins (want the same connection)", err, s.Logins())
	}
	// A 421 on the reused connection: one fresh connection is tried at once
	// (login 5), which gets the 421 too and is dropped; the next message
	// needs another login (6).
	s.SetFaults(upstreamtest.Faults{Mail: &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "closing"}})
	c2.Send(context.Background(), msg(s.Username()))
	s.SetFaults(upstreamtest.Faults{})
	if _, err := c2.Send(context.Background(), msg(s.Username())); err != nil || s.Logins() != 6 {
		t.Fatalf("after a 421: %v, %d logins (want a fresh connection)", err, s.Logins())
	}
}

func TestReuseSurvivesAServerSideClose(t *testing.T) {
	s, err := upstreamtest.Start(upstreamtest.Options{IdleTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c := client(t, s, func(cfg *upstream.Config) {
		cfg.MaxIdle, cfg.IdleTimeout, cfg.MaxMessagesPerConnection = 1, time.Minute, 100
	})
	defer c.CloseIdle()
	if _, err := c.Send(context.Background(), msg(s.Username())); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // the server hangs up on the idle connection
	if _, err := c.Send(context.Background(), msg(s.Username())); err != nil {
		t.Fatalf("a connection closed by the server while idle must be replaced silently: %v", err)
	}
	if s.Logins() != 2 || len(s.Messages()) != 2 {
		t.Fatalf("%d logins, %d messages", s.Logins(), len(s.Messages()))
	}
	// The message tried again on the new connection is whole, although
	// its first try had already read it.
	if got := string(s.Messages()[1].Data); got != body {
		t.Fatalf("the resent message is %q, want %q", got, body)
	}
}

func TestIdleConnectionsAreClosed(t *testing.T) {
	s := standin(t)
	c := client(t, s, func(cfg *upstream.Config) {
		cfg.MaxIdle, cfg.IdleTimeout, cfg.MaxMessagesPerConnection = 1, 50*time.Millisecond, 100
	})
	if _, err := c.Send(context.Background(), msg(s.Username())); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if _, err := c.Send(context.Background(), msg(s.Username())); err != nil || s.Logins() != 2 {
		t.Fatalf("after the idle timeout a new login is expected: %v, %d", err, s.Logins())
	}
	c.CloseIdle()
}

// rawServer accepts connections and hands them to serve; loopback only.
func rawServer(t *testing.T, implicitTLS *tls.Config, serve func(net.Conn)) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if implicitTLS != nil {
				c = tls.Server(c, implicitTLS)
			}
			go func() { defer c.Close(); serve(c) }()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

func TestHostileUpstreams(t *testing.T) {
	ca, _ := certs.NewCA("hostile test CA")
	leaf, _ := ca.Issue("localhost", "127.0.0.1")
	tlsCfg := &tls.Config{Certificates: []tls.Certificate{leaf}}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.PEM)
	endless := func(c net.Conn) {
		line := "220-" + strings.Repeat("x", 500) + "\r\n"
		for {
			if _, err := io.WriteString(c, line); err != nil {
				return
			}
		}
	}
	drip := func(c net.Conn) {
		for {
			if _, err := c.Write([]byte("2")); err != nil {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	silent := func(c net.Conn) { io.Copy(io.Discard, c) }
	cases := []struct {
		name     string
		implicit bool
		serve    func(net.Conn)
		stage    upstream.Stage
		text     string
	}{
		{"endless greeting before TLS", false, endless, upstream.StageGreeting, ""},
		{"endless greeting after TLS", true, endless, upstream.StageGreeting, "larger than 1 MiB"},
		{"greeting that drips", false, drip, upstream.StageGreeting, ""},
		{"greeting that never comes", false, silent, upstream.StageGreeting, "timed out"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var cfgTLS *tls.Config
			if c.implicit {
				cfgTLS = tlsCfg
			}
			port := rawServer(t, cfgTLS, c.serve)
			cl := upstream.New(upstream.Config{Host: "127.0.0.1", StartTLSPort: port, TLSPort: port + 100000, RootCAs: pool,
				Username: "u@icloud.com", Password: "p", HeloName: "h.example", ConnectTimeout: time.Second,
				Timeout: 500 * time.Millisecond, AttemptTimeout: 2 * time.Second, ReprobeInterval: time.Hour})
			if c.implicit {
				cl = upstream.New(upstream.Config{Host: "127.0.0.1", StartTLSPort: port + 100000, TLSPort: port, RootCAs: pool,
					Username: "u@icloud.com", Password: "p", HeloName: "h.example", ConnectTimeout: time.Second,
					Timeout: 500 * time.Millisecond, AttemptTimeout: 2 * time.Second, ReprobeInterval: time.Hour})
			}
			var before runtime.MemStats
			runtime.ReadMemStats(&before)
			_, err := cl.Send(context.Background(), msg("u@icloud.com"))
			var after runtime.MemStats
			runtime.ReadMemStats(&after)
			var ue *upstream.Error
			if !errors.As(err, &ue) || (ue.Stage != c.stage && ue.Stage != upstream.StageConnect) || ue.Class != upstream.Unreachable || !strings.Contains(ue.Error(), c.text) {
				t.Fatalf("got %v", err)
			}
			if grew := int64(after.HeapInuse) - int64(before.HeapInuse); grew > 16<<20 {
				t.Fatalf("memory grew by %d bytes", grew)
			}
		})
	}
}

func TestTLSBelow12IsRefusedWithoutLoggingIn(t *testing.T) {
	s, err := upstreamtest.Start(upstreamtest.Options{MaxTLSVersion: tls.VersionTLS11})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_, err = client(t, s).Send(context.Background(), msg(s.Username()))
	var ue *upstream.Error
	if !errors.As(err, &ue) || ue.Stage != upstream.StageTLS || s.AuthAttempts() != 0 {
		t.Fatalf("got %v, %d AUTH attempts", err, s.AuthAttempts())
	}
}

// A session near its message limit gets a spare logged in beside it, so
// the message after its last does not wait for a fresh login (six round
// trips to iCloud, the tail of the latency); the spare is used, not
// another login.
func TestASpareIsLoggedInBeforeTheLimit(t *testing.T) {
	s := standin(t)
	c := client(t, s, func(cfg *upstream.Config) {
		cfg.MaxIdle, cfg.IdleTimeout, cfg.MaxMessagesPerConnection = 2, time.Minute, 4
	})
	defer c.CloseIdle()
	for i := 0; i < 3; i++ {
		if _, err := c.Send(context.Background(), msg(s.Username())); err != nil {
			t.Fatal(err)
		}
	}
	for deadline := time.Now().Add(10 * time.Second); s.Logins() < 2 && time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
	}
	if n := s.Logins(); n != 2 {
		t.Fatalf("after 3 of 4 messages: %d logins, want the spare's too", n)
	}
	for i := 0; i < 2; i++ { // the 4th on the first session, the 5th on the spare
		if _, err := c.Send(context.Background(), msg(s.Username())); err != nil {
			t.Fatal(err)
		}
	}
	if n := s.Logins(); n != 2 {
		t.Fatalf("after 5 messages: %d logins, want 2 (the spare carries the 5th)", n)
	}
}
