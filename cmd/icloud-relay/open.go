package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"runtime"

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
	q, err := control.Open(cfg.Queue.Dir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "icloud-relay open: %v\n", err)
		return exitFailure
	}
	raw, err := q.Status()
	q.Close()
	var r status.Report
	if err == nil {
		err = json.Unmarshal(raw, &r)
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
