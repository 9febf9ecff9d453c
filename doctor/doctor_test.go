package doctor_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
	"github.com/rs/zerolog"

	"github.com/icloud-relay/icloud-relay/app"
	"github.com/icloud-relay/icloud-relay/config"
	"github.com/icloud-relay/icloud-relay/doctor"
	"github.com/icloud-relay/icloud-relay/upstream/upstreamtest"
)

type fixture struct {
	s   *upstreamtest.Server
	cfg *config.Config
}

// setup starts a stand-in and, with relay, the relay itself on loopback.
func setup(t *testing.T, relay bool, extra string) *fixture {
	t.Helper()
	return setupWith(t, upstreamtest.Options{}, relay, extra)
}

func setupWith(t *testing.T, opts upstreamtest.Options, relay bool, extra string) *fixture {
	t.Helper()
	opts.Aliases = append(opts.Aliases, "alias@icloud.com")
	s, err := upstreamtest.Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	dir := t.TempDir()
	ca, _ := s.WriteCA(dir)
	text := fmt.Sprintf(`[listen]
addr = "127.0.0.1:0"
%sconnect_timeout = "2s"
timeout = "1s"
[queue]
dir = %q
%s`, s.UpstreamTOML("", ca), filepath.Join(dir, "queue"), extra)
	path := filepath.Join(dir, "config.toml")
	os.WriteFile(path, []byte(text), 0o600)
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if relay {
		a, err := app.New(cfg, zerolog.Nop(), cfg.Redactor())
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Stop(context.Background()) })
		cfg.Listen.Addr = a.Addr().String()
	}
	return &fixture{s: s, cfg: cfg}
}

func step(rep *doctor.Report, name string) doctor.Step {
	for _, s := range rep.Steps {
		if s.Name == name {
			return s
		}
	}
	return doctor.Step{Name: name, Status: "missing"}
}

func TestHealthyStandInPassesEveryStep(t *testing.T) {
	f := setup(t, true, "[sender]\naliases = [\"alias@icloud.com\"]\n")
	rep := doctor.Run(context.Background(), f.cfg, doctor.Options{SendTest: "friend@example.com"})
	var out bytes.Buffer
	rep.WriteText(&out)
	if !rep.OK {
		t.Fatalf("healthy stand-in:\n%s", out.String())
	}
	want := []string{"config", "dns", fmt.Sprintf("tcp %d", f.s.StartTLSPort), fmt.Sprintf("tcp %d", f.s.TLSPort), "greeting", "tls", "ehlo", "auth",
		"size", "sender demo@icloud.com", "sender alias@icloud.com", "send-test friend@example.com", "listener", "queue dir", "permissions", "queue"}
	if len(rep.Steps) != len(want) {
		t.Fatalf("steps:\n%s", out.String())
	}
	for i, name := range want {
		if s := rep.Steps[i]; s.Name != name || s.Status != doctor.OK {
			t.Errorf("step %d: %+v, want %s ok", i, s, name)
		}
	}
	if got := f.s.Messages(); len(got) != 1 || got[0].To[0] != "friend@example.com" {
		t.Fatalf("--send-test delivered %+v", got)
	}
	if !strings.Contains(step(rep, "ehlo").Detail, "PLAIN") || !strings.Contains(step(rep, "ehlo").Detail, "SIZE") {
		t.Errorf("ehlo detail %q lacks AUTH mechanisms and SIZE", step(rep, "ehlo").Detail)
	}
	if !strings.Contains(step(rep, "tls").Detail, "icloud-relay test CA") {
		t.Errorf("tls detail %q lacks the issuer", step(rep, "tls").Detail)
	}
	if strings.Contains(out.String(), f.s.Password()) {
		t.Fatal("doctor printed the password")
	}
	var js bytes.Buffer
	rep.WriteJSON(&js)
	var back doctor.Report
	if err := json.Unmarshal(js.Bytes(), &back); err != nil || !back.OK || len(back.Steps) != len(want) {
		t.Fatalf("JSON round trip: %v %s", err, js.String())
	}
}

// The stand-in's faults through doctor: the verdict, the failing step and its remedy.
func TestFaultsThroughDoctor(t *testing.T) {
	e := func(code int, ec smtp.EnhancedCode, text string) *smtp.SMTPError {
		return &smtp.SMTPError{Code: code, EnhancedCode: ec, Message: text}
	}
	type tc struct {
		name     string
		extra    string
		sendTest string
		fault    func(*upstreamtest.Server)
		ok       bool
		step     func(*upstreamtest.Server) string // the step that fails (or warns, when ok)
		status   doctor.Status
		remedy   string
	}
	tcp587 := func(s *upstreamtest.Server) string { return fmt.Sprintf("tcp %d", s.StartTLSPort) }
	named := func(n string) func(*upstreamtest.Server) string {
		return func(*upstreamtest.Server) string { return n }
	}
	cases := []tc{
		{name: "587 refused", fault: func(s *upstreamtest.Server) { s.SetPort(s.StartTLSPort, upstreamtest.PortRefused) },
			ok: true, step: tcp587, status: doctor.Warn, remedy: "other port"},
		{name: "587 blackholed", fault: func(s *upstreamtest.Server) { s.SetPort(s.StartTLSPort, upstreamtest.PortBlackhole) },
			ok: true, step: named("fallback"), status: doctor.Warn, remedy: "which the relay uses by itself"},
		{name: "both ports down", fault: func(s *upstreamtest.Server) {
			s.SetPort(s.StartTLSPort, upstreamtest.PortRefused)
			s.SetPort(s.TLSPort, upstreamtest.PortRefused)
		}, step: tcp587, status: doctor.Fail, remedy: "blocked or closed"},
		{name: "bad certificate", fault: func(s *upstreamtest.Server) { s.SetFaults(upstreamtest.Faults{BadCert: true}) },
			step: named("tls"), status: doctor.Fail, remedy: "intercepting TLS"},
		{name: "auth failure", fault: func(s *upstreamtest.Server) { s.SetFaults(upstreamtest.Faults{AuthFail: true}) },
			step: named("auth"), status: doctor.Fail, remedy: "app-specific password"},
		{name: "sender not allowed", extra: "[sender]\naliases = [\"stranger@example.com\"]\n",
			step: named("sender stranger@example.com"), status: doctor.Fail, remedy: "aliases"},
		{name: "4xx at MAIL", fault: func(s *upstreamtest.Server) {
			s.SetFaults(upstreamtest.Faults{Mail: e(451, smtp.EnhancedCode{4, 3, 0}, "later")})
		},
			step: named("sender demo@icloud.com"), status: doctor.Fail, remedy: "retries by itself"},
		{name: "recipient refused", sendTest: "nobody@example.com", fault: func(s *upstreamtest.Server) {
			s.SetFaults(upstreamtest.Faults{Rcpt: map[string]*smtp.SMTPError{"nobody@example.com": e(550, smtp.EnhancedCode{5, 1, 1}, "no such user")}})
		}, step: named("send-test nobody@example.com"), status: doctor.Fail, remedy: "recipient"},
		{name: "4xx at DATA", sendTest: "friend@example.com", fault: func(s *upstreamtest.Server) {
			s.SetFaults(upstreamtest.Faults{Data: e(451, smtp.EnhancedCode{4, 3, 0}, "later")})
		}, step: named("send-test friend@example.com"), status: doctor.Fail, remedy: "retries by itself"},
		{name: "too large", sendTest: "friend@example.com", fault: func(s *upstreamtest.Server) {
			s.SetFaults(upstreamtest.Faults{Data: e(552, smtp.EnhancedCode{5, 3, 4}, "too big")})
		}, step: named("send-test friend@example.com"), status: doctor.Fail, remedy: "larger than iCloud accepts"},
		{name: "dropped after DATA", sendTest: "friend@example.com", fault: func(s *upstreamtest.Server) {
			s.SetFaults(upstreamtest.Faults{DropAfterData: true})
		}, step: named("send-test friend@example.com"), status: doctor.Fail},
		{name: "421 at greeting", fault: func(s *upstreamtest.Server) {
			s.SetFaults(upstreamtest.Faults{Greeting: e(421, smtp.EnhancedCode{4, 3, 2}, "busy")})
		}, step: named("greeting"), status: doctor.Fail, remedy: "busy or maintenance"},
		{name: "relay not running", step: named("listener"), ok: true, status: doctor.Warn, remedy: "Start the relay"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := setup(t, c.name != "relay not running", c.extra)
			if c.fault != nil {
				c.fault(f.s)
			}
			rep := doctor.Run(context.Background(), f.cfg, doctor.Options{SendTest: c.sendTest})
			var out bytes.Buffer
			rep.WriteText(&out)
			s := step(rep, c.step(f.s))
			if rep.OK != c.ok || s.Status != c.status || !strings.Contains(s.Remedy, c.remedy) {
				t.Fatalf("ok=%v, step %s=%s remedy %q; want ok=%v, %s, remedy with %q\n%s", rep.OK, s.Name, s.Status, s.Remedy, c.ok, c.status, c.remedy, out.String())
			}
			if s.Status == doctor.Fail && s.Remedy == "" {
				t.Fatalf("failed step without remedy:\n%s", out.String())
			}
		})
	}
}

func TestPasswordShapeIsAWarning(t *testing.T) {
	f := setup(t, true, "")
	f.cfg.Upstream.Password = config.Secret(f.s.Password()) // matches
	if s := step(doctor.Run(context.Background(), f.cfg, doctor.Options{}), "config"); s.Status != doctor.OK {
		t.Fatalf("config step %+v", s)
	}
	f.cfg.Upstream.Password = "MyAppleIDPassword1"
	rep := doctor.Run(context.Background(), f.cfg, doctor.Options{})
	if s := step(rep, "config"); s.Status != doctor.Warn || !strings.Contains(s.Remedy, "app-specific") {
		t.Fatalf("config step %+v", s)
	}
	var out bytes.Buffer
	rep.WriteText(&out)
	if strings.Contains(out.String(), "MyAppleIDPassword1") {
		t.Fatal("doctor printed the password")
	}
}

func TestUnwritableQueueFails(t *testing.T) {
	f := setup(t, false, "")
	blocker := filepath.Join(t.TempDir(), "file")
	os.WriteFile(blocker, nil, 0o600)
	f.cfg.Queue.Dir = filepath.Join(blocker, "queue") // under a file: cannot exist
	rep := doctor.Run(context.Background(), f.cfg, doctor.Options{})
	if s := step(rep, "queue dir"); s.Status != doctor.Fail || rep.OK {
		t.Fatalf("queue dir step %+v, ok=%v", s, rep.OK)
	}
}

// Each cause the doctor can meet gets its stage, its class and advice for
// that cause, not a neighbour's (the daily limit is not an alias problem;
// a certificate for another host is not interception).
func TestEveryCauseIsExplained(t *testing.T) {
	for _, tc := range []struct {
		name   string
		faults upstreamtest.Faults
		step   string
		class  string
		remedy string
		not    string
	}{
		{"certificate for another host", upstreamtest.Faults{WrongName: true}, "tls", "unreachable", "upstream.host is probably wrong", "intercepting"},
		{"certificate from an unknown issuer", upstreamtest.Faults{BadCert: true}, "tls", "unreachable", "intercepting TLS", "upstream.host"},
		{"login refused", upstreamtest.Faults{AuthFail: true}, "auth", "pause_account", "app-specific password", ""},
		{"daily limit at MAIL", upstreamtest.Faults{Mail: &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1},
			Message: "<demo@icloud.com>: You have exceeded your daily sending limit. Please try again later."}},
			"sender demo@icloud.com", "hold_daily_limit", "daily sending limit", "aliases"},
		{"sender refused", upstreamtest.Faults{Mail: &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "not your address"}},
			"sender demo@icloud.com", "permanent", "sender.aliases", "daily"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := setup(t, false, "")
			f.s.SetFaults(tc.faults)
			rep := doctor.Run(context.Background(), f.cfg, doctor.Options{})
			st := step(rep, tc.step)
			if st.Status != doctor.Fail || st.Class != tc.class || !strings.Contains(st.Remedy, tc.remedy) || (tc.not != "" && strings.Contains(st.Remedy, tc.not)) {
				var out bytes.Buffer
				rep.WriteText(&out)
				t.Fatalf("step %s: %+v; want fail, class %s, a remedy with %q and without %q\n%s", tc.step, st, tc.class, tc.remedy, tc.not, out.String())
			}
		})
	}
}

// A relay limit above the SIZE iCloud advertises is a warning that says
// what to set.
func TestSizeAboveTheAdvertisedLimitIsAWarning(t *testing.T) {
	f := setupWith(t, upstreamtest.Options{MaxSize: 5_000_000}, false, "")
	f.cfg.Listen.MaxMessageSize = 20_000_000
	rep := doctor.Run(context.Background(), f.cfg, doctor.Options{})
	st := step(rep, "size")
	if st.Status != doctor.Warn || !strings.Contains(st.Remedy, "listen.max_message_size to 5000000 or less") {
		t.Fatalf("size step: %+v", st)
	}
	if !rep.OK {
		t.Fatal("a size mismatch stops no mail: the report must still say mail can flow")
	}
	f.cfg.Listen.MaxMessageSize = 4_000_000
	if st := step(doctor.Run(context.Background(), f.cfg, doctor.Options{}), "size"); st.Status != doctor.OK {
		t.Fatalf("size step with a lower limit: %+v", st)
	}
}

// A port that does not connect is dialled once: the login goes straight
// to the other port, without a fallback through the closed one.
func TestAClosedPortIsTriedOnce(t *testing.T) {
	f := setup(t, false, "")
	f.s.SetPort(f.s.StartTLSPort, upstreamtest.PortRefused)
	var begun []string
	rep := doctor.Run(context.Background(), f.cfg, doctor.Options{Progress: recorder{&begun}})
	if !rep.OK || step(rep, fmt.Sprintf("tcp %d", f.s.StartTLSPort)).Status != doctor.Warn {
		t.Fatalf("report: %+v", rep)
	}
	if st := step(rep, "fallback"); st.Status != "missing" {
		t.Fatalf("the login went through the closed port first: %+v", st)
	}
	if !strings.Contains(step(rep, "tls").Detail, fmt.Sprintf("port %d", f.s.TLSPort)) {
		t.Fatalf("tls step: %+v", step(rep, "tls"))
	}
	if len(begun) == 0 || begun[0] != "dns" {
		t.Fatalf("progress began %v", begun)
	}
}

type recorder struct{ begun *[]string }

func (r recorder) Begin(name string) { *r.begun = append(*r.begun, name) }
func (r recorder) Done(doctor.Step)  {}

// A config that holds the password and other users can read is a warning
// that says what to run.
func TestReadableSecretsAreAWarning(t *testing.T) {
	f := setup(t, false, "")
	if st := step(doctor.Run(context.Background(), f.cfg, doctor.Options{}), "permissions"); st.Status != doctor.OK {
		t.Fatalf("an owner-only config: %+v", st)
	}
	os.Chmod(f.cfg.Path, 0o644)
	st := step(doctor.Run(context.Background(), f.cfg, doctor.Options{}), "permissions")
	if st.Status != doctor.Warn || !strings.Contains(st.Detail, "holds a password") || !strings.Contains(st.Detail, "chmod 600") || st.Remedy == "" {
		t.Fatalf("a readable config: %+v", st)
	}
}
