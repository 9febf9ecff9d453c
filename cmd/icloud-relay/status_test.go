package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/icloud-relay/icloud-relay/logging"
	"github.com/icloud-relay/icloud-relay/upstream/upstreamtest"
)

// pageRelay is a relay run by the real binary, with its status page.
type pageRelay struct {
	*proc
	s    *upstreamtest.Server
	cfg  string
	dir  string
	addr string // the SMTP listener
	url  string // the status page
}

func startPageRelay(t *testing.T, opts upstreamtest.Options, delivery string) *pageRelay {
	t.Helper()
	s := standIn(t, opts)
	dir := t.TempDir()
	addr := freeAddr(t)
	cfg := writeConfigAt(t, s, dir, s.Password(), addr, delivery)
	// Idle connections close soon, so that a changed password shows at the
	// next message rather than after the 30 s default.
	text, _ := os.ReadFile(cfg)
	os.WriteFile(cfg, []byte(strings.Replace(string(text), "[upstream]\n", "[upstream]\nidle_timeout = \"200ms\"\n", 1)), 0o600)
	p := startProc(t, "run", "--config", cfg)
	p.waitLog(t, "relay started")
	u, _ := p.waitLog(t, logging.EvStatusPage)["url"].(string)
	if !strings.HasPrefix(u, "http://127.0.0.1:") {
		t.Fatalf("status page url %q", u)
	}
	return &pageRelay{proc: p, s: s, cfg: cfg, dir: dir, addr: addr, url: u}
}

// get fetches path from the page with the Host the browser would send.
func (r *pageRelay) get(t *testing.T, path string) (int, string, http.Header) {
	t.Helper()
	res, err := http.Get(strings.TrimSuffix(r.url, "/") + path)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b), res.Header
}

// token is what the page hands its own script (and the cookie).
func (r *pageRelay) token(t *testing.T) string {
	t.Helper()
	_, page, _ := r.get(t, "/")
	const meta = `<meta name="csrf" content="`
	i := strings.Index(page, meta)
	if i < 0 {
		t.Fatalf("no token in the page:\n%s", page)
	}
	return page[i+len(meta) : i+len(meta)+48]
}

func (r *pageRelay) post(t *testing.T, path string, form url.Values, header map[string]string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, strings.TrimSuffix(r.url, "/")+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for k, v := range header {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

func (r *pageRelay) report(t *testing.T) map[string]any {
	t.Helper()
	_, body, _ := r.get(t, "/api/status")
	var m map[string]any
	if err := json.Unmarshal([]byte(body), &m); err != nil {
		t.Fatalf("/api/status: %v\n%s", err, body)
	}
	return m
}

var busy = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try again later"}

// A browser is the attack path to a page on localhost: another site may
// make the browser send requests to it, or rebind a name of its own to
// 127.0.0.1. Neither gets anything done, and nothing the page or /metrics
// serves holds the password.
func TestTheStatusPageRefusesWhatAnotherSiteCanSend(t *testing.T) {
	r := startPageRelay(t, upstreamtest.Options{}, "")
	r.s.SetFaults(upstreamtest.Faults{Mail: busy})
	if err := sendTo(r.addr, "stays queued"); err != nil {
		t.Fatal(err)
	}
	id := ""
	for deadline := time.Now().Add(10 * time.Second); id == "" && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if q, _ := r.report(t)["queue"].([]any); len(q) == 1 {
			id, _ = q[0].(map[string]any)["id"].(string)
		}
	}
	if id == "" {
		t.Fatal("the queued message is not on the page")
	}
	tok := r.token(t)
	cookie := "icloud_relay_token=" + tok
	for _, c := range []struct {
		name   string
		form   url.Values
		header map[string]string
		code   int
	}{
		{"DNS rebinding: another Host", url.Values{"csrf": {tok}, "id": {id}}, map[string]string{"Host": "evil.example:" + portOf(r.url), "Cookie": cookie}, http.StatusMisdirectedRequest},
		{"no token at all", url.Values{"id": {id}}, nil, http.StatusForbidden},
		{"the cookie alone (a cross-site form)", url.Values{"id": {id}}, map[string]string{"Cookie": cookie}, http.StatusForbidden},
		{"the form's token alone", url.Values{"csrf": {tok}, "id": {id}}, nil, http.StatusForbidden},
		{"a wrong token", url.Values{"csrf": {strings.Repeat("0", 48)}, "id": {id}}, map[string]string{"Cookie": "icloud_relay_token=" + strings.Repeat("0", 48)}, http.StatusForbidden},
		{"another site's Origin", url.Values{"csrf": {tok}, "id": {id}}, map[string]string{"Cookie": cookie, "Origin": "http://evil.example"}, http.StatusForbidden},
	} {
		code, body := r.post(t, "/api/delete", c.form, c.header)
		if code != c.code {
			t.Errorf("%s: %d %s, want %d", c.name, code, body, c.code)
		}
	}
	for _, path := range []string{"/", "/api/status"} {
		req, _ := http.NewRequest(http.MethodGet, r.url+strings.TrimPrefix(path, "/"), nil)
		req.Host = "rebound.example:" + portOf(r.url)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusMisdirectedRequest {
			t.Errorf("GET %s with another Host: %d", path, res.StatusCode)
		}
	}
	if q, _ := r.report(t)["queue"].([]any); len(q) != 1 {
		t.Fatalf("a refused request changed the queue: %v", q)
	}
	// The page's own request, with the cookie and the token, works.
	if code, body := r.post(t, "/api/delete", url.Values{"csrf": {tok}, "id": {id}}, map[string]string{"Cookie": cookie, "Origin": strings.TrimSuffix(r.url, "/")}); code != http.StatusOK {
		t.Fatalf("the page's own delete: %d %s", code, body)
	}
	if q, _ := r.report(t)["queue"].([]any); len(q) != 0 {
		t.Fatalf("deleted, but still queued: %v", q)
	}
	// No CORS: no other origin may read a reply.
	_, page, h := r.get(t, "/")
	for k := range h {
		if strings.HasPrefix(k, "Access-Control-") {
			t.Errorf("CORS header %s", k)
		}
	}
	if c := h.Get("Set-Cookie"); !strings.Contains(c, "SameSite=Strict") || !strings.Contains(c, "HttpOnly") {
		t.Errorf("cookie %q", c)
	}
	for _, path := range []string{"/", "/app.js", "/api/status", "/api/events", "/metrics"} {
		_, body, _ := r.get(t, path)
		if strings.Contains(body, r.s.Password()) {
			t.Errorf("%s shows the password", path)
		}
	}
	if strings.Count(page, tok) != 1 {
		t.Errorf("the token is shown %d times in the page, want once (in the meta tag the script reads)", strings.Count(page, tok))
	}
}

func portOf(u string) string {
	pu, _ := url.Parse(u)
	return pu.Port()
}

// /metrics is the Prometheus text format, its counters move as messages
// flow, and "status --json" against the same (foreground) relay says the
// same.
func TestMetricsMoveAndStatusSaysTheSame(t *testing.T) {
	r := startPageRelay(t, upstreamtest.Options{}, "")
	scrape := func() map[string]*dto.MetricFamily {
		t.Helper()
		_, body, h := r.get(t, "/metrics")
		if ct := h.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
			t.Fatalf("Content-Type %q", ct)
		}
		parser := expfmt.NewTextParser(model.UTF8Validation)
		fams, err := parser.TextToMetricFamilies(strings.NewReader(body))
		if err != nil {
			t.Fatalf("/metrics does not parse: %v\n%s", err, body)
		}
		return fams
	}
	value := func(fams map[string]*dto.MetricFamily, name string) float64 {
		t.Helper()
		f := fams[name]
		if f == nil {
			t.Fatalf("no %s", name)
		}
		m := f.GetMetric()[0]
		if c := m.GetCounter(); c != nil {
			return c.GetValue()
		}
		return m.GetGauge().GetValue()
	}
	before := scrape()
	if value(before, "icloud_relay_messages_delivered_total") != 0 || before["icloud_relay_messages_delivered_total"].GetType().String() != "COUNTER" {
		t.Fatalf("before: %v", before["icloud_relay_messages_delivered_total"])
	}
	for i := 0; i < 3; i++ {
		if err := sendTo(r.addr, "counted"); err != nil {
			t.Fatal(err)
		}
	}
	r.s.WaitMessages(3, 10*time.Second)
	r.s.SetFaults(upstreamtest.Faults{Mail: busy})
	if err := sendTo(r.addr, "waits"); err != nil {
		t.Fatal(err)
	}
	var after map[string]*dto.MetricFamily
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		// Sent right after the others, it is answered once on disk (bulk):
		// its first attempt may still be under way.
		if after = scrape(); value(after, "icloud_relay_queue_messages") == 1 && value(after, "icloud_relay_mail_can_flow") == 0 {
			break
		}
	}
	for name, want := range map[string]float64{
		"icloud_relay_messages_accepted_total":  4,
		"icloud_relay_messages_delivered_total": 3,
		"icloud_relay_queue_messages":           1,
		"icloud_relay_sent_last_24h_messages":   3,
		"icloud_relay_upstream_port":            float64(r.s.StartTLSPort),
		"icloud_relay_mail_can_flow":            0,
	} {
		if got := value(after, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if value(after, "icloud_relay_delivery_attempts_total") < 4 || value(after, "icloud_relay_upstream_logins_total") < 1 {
		t.Errorf("attempts %v, logins %v", value(after, "icloud_relay_delivery_attempts_total"), value(after, "icloud_relay_upstream_logins_total"))
	}

	out, err := exec.Command(binary, "status", "--json", "--config", r.cfg).Output()
	var st struct {
		Running   bool
		OK        bool
		State     string
		Queued    int
		SentToday int `json:"sent_today"`
		Port      int
		URL       string
		Remedy    string
	}
	if json.Unmarshal(out, &st) != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	if !st.Running || st.OK || st.State != "retrying" || st.Queued != 1 || st.SentToday != 3 || st.Port != r.s.StartTLSPort || st.URL != r.url || st.Remedy == "" {
		t.Fatalf("status --json says %+v\n%s", st, out)
	}
	code, text := runCLI(t, "status", "--config", r.cfg)
	for _, want := range []string{"✗ Mail is not going out", "what to do", "1 waiting, 0 failed", "3 messages", r.url} {
		if !strings.Contains(text, want) {
			t.Errorf("status lacks %q:\n%s", want, text)
		}
	}
	if code != 1 {
		t.Errorf("status exit %d while mail cannot flow, want 1", code)
	}
}

// A user who cannot read the queue of a relay that runs as another account
// (the .deb's service) still gets "status" and "open": from the page, which
// any local user may read. Here the control endpoint is taken away, as a
// queue directory of another user's would hide it.
func TestStatusWorksForAUserWhoCannotReadTheQueue(t *testing.T) {
	s := standIn(t, upstreamtest.Options{})
	dir := t.TempDir()
	page := freeAddr(t)
	cfg := writeConfigAt(t, s, dir, s.Password(), freeAddr(t), "[status]\naddr = \""+page+"\"\n")
	p := startProc(t, "run", "--config", cfg)
	p.waitLog(t, logging.EvStatusPage)
	if err := os.Remove(filepath.Join(dir, "queue", "control.json")); err != nil {
		t.Fatal(err)
	}
	out, _ := exec.Command(binary, "status", "--json", "--config", cfg).Output()
	var st struct {
		Running bool
		OK      bool
		URL     string
		Problem string
	}
	if err := json.Unmarshal(out, &st); err != nil || !st.Running || !st.OK || st.URL != "http://"+page+"/" || st.Problem != "" {
		t.Fatalf("status --json without the control endpoint: %v\n%s", err, out)
	}
	code, text := runCLI(t, "open", "--config", cfg)
	if !strings.HasPrefix(text, "http://"+page+"/\n") {
		t.Fatalf("open: exit %d\n%s", code, text)
	}
}
