package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"time"

	"github.com/icloud-relay/icloud-relay/relay/control"
	"github.com/icloud-relay/icloud-relay/status"
)

// openCmd opens the running relay's status page in the default browser.
func openCmd(args []string) int {
	fs := flag.NewFlagSet("open", flag.ContinueOnError)
	cfgPath := configFlag(fs)
	fs.Usage = func() {
		fmt.Fprintln(os.Stderr, "Usage: icloud-relay open [--config FILE]\n\nOpens the running relay's status page in the default browser.")
		fs.PrintDefaults()
	}
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	cfg, ok := loadLocalConfig(*cfgPath)
	if !ok {
		return exitUsage
	}
	if cfg.Status.Addr == "" {
		fmt.Fprintf(os.Stderr, "icloud-relay open: the status page is off ([status] addr = \"\" in %s)\n", cfg.Path)
		return exitFailure
	}
	var r status.Report
	q, err := control.Open(cfg.Queue.Dir)
	if err == nil {
		var raw json.RawMessage
		raw, err = q.Status()
		q.Close()
		if err == nil {
			err = json.Unmarshal(raw, &r)
		}
	}
	if err != nil && !errors.Is(err, control.ErrNotRunning) {
		// The queue is another user's (a system service): its page, which
		// any local user may open, says the same.
		if pr, perr := pageReport(cfg.Status.Addr); perr == nil {
			r, err = *pr, nil
		}
	}
	switch {
	case err != nil:
		fmt.Fprintf(os.Stderr, "icloud-relay open: %v: start it first (icloud-relay start, or icloud-relay run)\n", err)
		return exitFailure
	case r.URL == "":
		fmt.Fprintf(os.Stderr, "icloud-relay open: the relay runs but its status page could not listen on %s; its log says why\n", cfg.Status.Addr)
		return exitFailure
	}
	fmt.Println(r.URL)
	if err := browse(r.URL); err != nil {
		fmt.Fprintf(os.Stderr, "icloud-relay open: cannot start a browser (%v): open the address above yourself\n", err)
		return exitFailure
	}
	return exitOK
}

// pageReport asks the status page at addr (a fixed port) for the relay's
// report: for a user who cannot read the queue of a relay that runs as
// another account.
func pageReport(addr string) (*status.Report, error) {
	if _, port, err := net.SplitHostPort(addr); err != nil || port == "0" {
		return nil, fmt.Errorf("no fixed status page address (%q)", addr)
	}
	c := http.Client{Timeout: 3 * time.Second}
	res, err := c.Get("http://" + addr + "/api/status")
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("the status page answered %s", res.Status)
	}
	var r status.Report
	if err := json.NewDecoder(io.LimitReader(res.Body, 8<<20)).Decode(&r); err != nil {
		return nil, fmt.Errorf("the status page's report: %w", err)
	}
	return &r, nil
}

// browse opens url in the desktop's default browser.
func browse(url string) error {
	var cmd *exec.Cmd
	switch runtime.GOOS {
	case "windows":
		cmd = exec.Command("rundll32", "url.dll,FileProtocolHandler", url)
	case "darwin":
		cmd = exec.Command("open", url)
	default:
		cmd = exec.Command("xdg-open", url)
	}
	return cmd.Start()
}
