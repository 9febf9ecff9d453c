package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/icloud-relay/icloud-relay/internal/testenv"
	"github.com/icloud-relay/icloud-relay/upstream/upstreamtest"
)

// browser starts a headless Chromium (Debian's chromium package) for the
// test, with the flags a closed network needs.
func browser(t *testing.T) context.Context {
	t.Helper()
	exe := ""
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			exe = p
			break
		}
	}
	if exe == "" {
		testenv.Skip(t, "no Chromium (Debian's chromium package has it)")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(exe), chromedp.UserDataDir(t.TempDir()), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-sync", true),
		chromedp.WindowSize(420, 900)) // a phone-sized window
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelB := chromedp.NewContext(actx)
	t.Cleanup(func() { cancelB(); cancelA() })
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("cannot start %s: %v", exe, err)
	}
	return ctx
}

// artifacts is where the browser tests leave their screenshots
// ($ICLOUD_RELAY_ARTIFACTS, else icloud-relay-artifacts in the temp dir).
func artifacts(t *testing.T) string {
	dir := os.Getenv("ICLOUD_RELAY_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "icloud-relay-artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func screenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)) // quality 100: PNG
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	path := filepath.Join(artifacts(t), name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", path)
}

// The page as a person sees it, in a real browser: a message the stand-in
// refuses is shown queued with the failure and its remedy; Retry after the
// fault clears delivers it and the page turns green; a refused login shows
// the app-specific-password remedy in the banner; a Subject that is markup
// shows as text and runs nothing.
func TestTheStatusPageInABrowser(t *testing.T) {
	ctx := browser(t)
	r := startPageRelay(t, upstreamtest.Options{}, "")
	r.s.SetFaults(upstreamtest.Faults{Mail: busy})
	hostile := `<script>document.title="pwned"</script><img src=x onerror="document.title='pwned'">`
	if err := sendTo(r.addr, hostile); err != nil {
		t.Fatal(err)
	}
	// Each step waits at most 20 s (the page polls every 2 s).
	within := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, 20*time.Second) }
	do := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		sctx, cancel := within()
		defer cancel()
		if err := chromedp.Do(sctx, steps...); err != nil {
			t.Fatalf("%s: %v\nrelay log:\n%s", what, err, r.output())
		}
	}
	text := func(sel string) string {
		t.Helper()
		sctx, cancel := within()
		defer cancel()
		v, err := chromedp.Run(sctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("text of %s: %v", sel, err)
		}
		return v
	}
	do("the queued message is shown",
		chromedp.Navigate(r.url),
		chromedp.WaitVisible(chromedp.CSS(`#queue tbody tr td.subject`)),
		chromedp.WaitVisible(chromedp.CSS(`#banner[data-state="retrying"]`)),
	)
	subject, why, banner := text(`#queue tbody tr td.subject`), text(`#queue tbody tr td.why`), text(`#banner`)
	title, _ := chromedp.Run(ctx, chromedp.Title())
	made, _ := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll("#queue script, #queue img").length`))
	if subject != hostile || title != "icloud-relay" || made != 0 {
		t.Errorf("the Subject is not plain text: shown %q, title %q, %d elements made from it", subject, title, made)
	}
	if !strings.Contains(why, "451") || !strings.Contains(banner, "What to do") {
		t.Errorf("the failure and its remedy are not shown: row %q, banner %q", why, banner)
	}
	screenshot(t, ctx, "status-queued.png")

	r.s.SetFaults(upstreamtest.Faults{})
	do("Retry delivers it and the page turns green",
		chromedp.Click(chromedp.CSS(`#queue button[data-action="retry"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#banner[data-state="ok"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#queue-empty`)),
	)
	banner = text(`#headline`)
	if got := r.s.WaitMessages(1, 10*time.Second); len(got) != 1 {
		t.Fatalf("%d delivered after Retry", len(got))
	}
	if banner != "Mail is flowing." {
		t.Errorf("green banner says %q", banner)
	}
	screenshot(t, ctx, "status-ok.png")

	do("Run checks streams the checklist",
		chromedp.Click(chromedp.CSS(`#run-checks`)),
		chromedp.WaitVisible(chromedp.CSS(`#checks li.ok`)),
		chromedp.Poll[chromedp.Void](`document.getElementById("tool-result").textContent === "Mail can flow."`))
	if steps := text(`#checks`); !strings.Contains(steps, "✓ auth") {
		t.Errorf("the checklist lacks the login step:\n%s", steps)
	}
	do("Send a test message",
		chromedp.Click(chromedp.CSS(`#send-test`)),
		chromedp.Poll[chromedp.Void](`document.getElementById("tool-result").textContent.startsWith("Test message sent to demo@icloud.com; the relay said: ")`))
	if got := r.s.WaitMessages(2, 10*time.Second); len(got) != 2 || got[1].To[0] != r.s.Username() {
		t.Fatalf("the test message did not reach the account's own address: %+v", got)
	}

	r.s.SetFaults(upstreamtest.Faults{AuthFail: true})
	time.Sleep(500 * time.Millisecond) // the logged-in connection has closed (idle_timeout)
	if err := sendTo(r.addr, "after the password changed"); err != nil {
		t.Fatal(err)
	}
	do("a refused login pauses, and the banner says what to do",
		chromedp.WaitVisible(chromedp.CSS(`#banner[data-state="paused"]`)))
	banner = text(`#banner`)
	for _, want := range []string{"iCloud refused the login", "app-specific password", "paused until"} {
		if !strings.Contains(banner, want) {
			t.Errorf("paused banner lacks %q:\n%s", want, banner)
		}
	}
	screenshot(t, ctx, "status-paused.png")
}
