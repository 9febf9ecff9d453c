package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/icloud-relay/icloud-relay/config"
	"github.com/icloud-relay/icloud-relay/internal/buildinfo"
	"github.com/icloud-relay/icloud-relay/internal/private"
	"github.com/icloud-relay/icloud-relay/relay/control"
	"github.com/icloud-relay/icloud-relay/service"
	"github.com/icloud-relay/icloud-relay/status"
)

// serviceCmd returns the command for one service-manager action.
func serviceCmd(action string) func([]string) int {
	return func(args []string) int {
		fs := flag.NewFlagSet(action, flag.ContinueOnError)
		user := fs.Bool("user", false, "a service of the current user (launchd agent, systemd user unit) instead of a system one")
		cfgPath := fs.String("config", "", "config file (default: the per-OS location)")
		asJSON := new(bool)
		if action == "status" {
			asJSON = fs.Bool("json", false, "print the summary as JSON")
		}
		fs.Usage = func() {
			fmt.Fprintf(os.Stderr, "Usage: icloud-relay %s [--config FILE] [--user]\n\n%s\n", action, serviceHelp[action])
			fs.PrintDefaults()
		}
		if code, ok := parseFlags(fs, args); !ok {
			return code
		}
		if *cfgPath == "" {
			*cfgPath = config.DefaultPaths(*user).Config
		}
		def := service.Definition{ConfigPath: *cfgPath, User: *user}
		if action == "status" {
			return statusCmd(def, *asJSON)
		}
		var cfg *config.Config
		if action == "install" {
			// Refused before the password is looked up: the installer's own
			// credential store is no test of the service's.
			if local, err := config.LoadLocal(*cfgPath); err == nil && local.Upstream.PasswordKeyring && !*user {
				fmt.Fprintf(os.Stderr, "icloud-relay install: %v\n", errKeyringSystemService)
				return exitUsage
			}
			var ok bool
			if cfg, ok = loadConfig(*cfgPath); !ok {
				return exitUsage
			}
			var err error
			if def, err = serviceDefinition(cfg, *user); err != nil {
				fmt.Fprintf(os.Stderr, "icloud-relay install: %v\n", err)
				return exitFailure
			}
		}
		if err := service.Control(action, def); err != nil {
			fmt.Fprintf(os.Stderr, "icloud-relay %s: %v\n", action, err)
			return exitFailure
		}
		switch action {
		case "install":
			printInstalled(cfg, def)
		case "uninstall":
			fmt.Println("Service removed. The config, queue and logs are kept.")
		default:
			fmt.Printf("Service %s: done.\n", action)
		}
		return exitOK
	}
}

var serviceHelp = map[string]string{
	"install":   "Installs the relay as a service that starts at boot and restarts after a failure.",
	"uninstall": "Removes the service (the config, queue and logs stay).",
	"start":     "Starts the installed service.",
	"stop":      "Stops the service gracefully (queued mail stays queued).",
	"restart":   "Restarts the service.",
	"status":    "Says whether the service runs and, from the running relay (service or foreground), whether mail\ncan flow: the stage, cause and remedy when it cannot, the port in use, the last delivery, the\nlast 24 hours against iCloud's daily limit, the queue and the status page's address.\nExit 0 when a relay runs and mail can flow, 1 otherwise.",
}

// errKeyringSystemService: a password in the credential store of the user
// who ran setup is out of reach of a system service (NT SERVICE\icloud-relay,
// root's daemon context, a systemd system unit or the icloud-relay account), which
// would then fail to start on a config error.
var errKeyringSystemService = errors.New("the password is in your own OS credential store (password_keyring), which a system service cannot read: " +
	"keep it in a file instead (icloud-relay setup without --keyring: readable by root and the service only), " +
	"or install a service of your own user (--user)")

// serviceDefinition is the service that runs cfg. A system service runs as
// the unprivileged service account where there is one (Linux, after the
// .deb or .rpm made it, else made here; macOS, made here when missing;
// Windows, always:
// its virtual account): it gets its queue and logs, and may read the
// password, which stays hidden from everyone else.
func serviceDefinition(cfg *config.Config, user bool) (service.Definition, error) {
	def := service.Definition{ConfigPath: cfg.Path, User: user, LogFile: serviceLogFile(cfg, user)}
	if cfg.Upstream.PasswordKeyring && !user {
		return def, errKeyringSystemService
	}
	def.Writable = []string{cfg.Queue.Dir, filepath.Dir(def.LogFile)}
	if !user && service.Supported() == nil { // no account made for a service that cannot be installed
		if err := service.EnsureAccount(); err != nil {
			return def, err
		}
	}
	if def.Account = serviceAccount(user); def.Account == "" {
		return def, nil
	}
	for _, dir := range def.Writable {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return def, err
		}
		if err := private.GiveTo(dir); err != nil {
			return def, fmt.Errorf("cannot give %s to the %s account: %w", dir, def.Account, err)
		}
	}
	secrets := []string{cfg.Upstream.PasswordFile}
	if who, err := private.Exposed(cfg.Path); err == nil && who == "" {
		secrets = append(secrets, cfg.Path) // a private config holds a secret
	}
	for _, f := range secrets {
		if f == "" {
			continue
		}
		if err := private.Share(f); err != nil {
			return def, fmt.Errorf("cannot let the %s account read %s: %w", def.Account, f, err)
		}
	}
	return def, nil
}

// serviceLogFile is where the service logs: log.file, or the per-OS
// default under a service manager.
func serviceLogFile(cfg *config.Config, user bool) string {
	if cfg.Log.File != "" {
		return cfg.Log.File
	}
	return config.DefaultPaths(user).Log
}

func printInstalled(cfg *config.Config, def service.Definition) {
	user := def.User
	logs := serviceLogFile(cfg, user)
	fmt.Printf("Installed the icloud-relay service (%s).\n\n", service.Platform())
	fmt.Printf("  config  %s\n  queue   %s\n  logs    %s\n", cfg.Path, cfg.Queue.Dir, logs)
	if exe := service.Copy(def); exe != "" {
		fmt.Printf("  binary  %s\n          (a copy of this one, where only administrators can change it; after an update of\n          icloud-relay: icloud-relay stop, uninstall, install, start)\n", exe)
	}
	if def.Account != "" {
		fmt.Printf("  runs as %s\n", def.Account)
		if cfg.Upstream.PasswordFile != "" {
			fmt.Printf("  the password file is readable by %s\n", secretReaders)
		}
	}
	fmt.Println()
	flag := ""
	if user {
		flag = " --user"
	}
	fmt.Printf("Next: icloud-relay start%s, then icloud-relay status%s and icloud-relay doctor --config %s\n", flag, flag, cfg.Path)
}

// statusCmd says whether the service runs and, asking the running relay
// (a service or one in the foreground), whether mail can flow: the status
// page's summary. Exit 0 when a relay runs and mail can flow.
func statusCmd(def service.Definition, asJSON bool) int {
	svc, err := service.Status(def)
	if err != nil {
		if !errors.Is(err, service.ErrNoManager) {
			fmt.Fprintf(os.Stderr, "icloud-relay status: %v\n", err)
			return exitFailure
		}
		if !asJSON {
			fmt.Fprintf(os.Stderr, "icloud-relay status: %v\n", err)
		}
		svc = "unavailable (no service manager)"
	}
	out := struct {
		Service string `json:"service"`
		Running bool   `json:"running"` // a relay runs on the queue (service or foreground)
		*status.Report
		Queued   int    `json:"queued"`
		Failed   int    `json:"failed"`
		Problem  string `json:"problem,omitempty"` // why the relay could not be asked
		QueueDir string `json:"queue_dir,omitempty"`
		// ThisVersion is this binary's: the running relay's differs after
		// an update until it is restarted (Windows: installed again).
		ThisVersion string `json:"this_version"`
	}{Service: svc, ThisVersion: buildinfo.Get().Short()}
	if cfg, err := config.LoadLocal(def.ConfigPath); err != nil {
		out.Problem = err.Error()
	} else if q, err := control.Open(cfg.Queue.Dir); err != nil {
		out.Problem = err.Error()
		// The queue is another user's (a system service): its page, which
		// any local user may read, has the same report.
		if r, perr := pageReport(cfg.Status.Addr); perr == nil {
			out.Running, out.Report, out.Problem = true, r, ""
			out.Queued, out.Failed = r.Queued, r.FailedCount
		}
	} else {
		out.QueueDir = cfg.Queue.Dir
		raw, err := q.Status()
		switch {
		case err == nil:
			out.Running = true
			if err := json.Unmarshal(raw, &out.Report); err != nil {
				out.Problem = "the relay's answer: " + err.Error()
			}
		case !errors.Is(err, control.ErrNotRunning):
			out.Problem = err.Error()
		}
		active, _ := q.Active()
		failed, _ := q.Failed()
		out.Queued, out.Failed = len(active), len(failed)
		q.Close()
	}
	code := exitFailure
	if out.Report != nil && out.Report.OK {
		code = exitOK
	}
	if asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		enc.Encode(out)
		return code
	}
	fmt.Printf("service: %s\n", svc)
	r := out.Report
	if r == nil {
		relay := "relay:   not running"
		if out.QueueDir != "" {
			relay += " on " + out.QueueDir
		}
		fmt.Println(relay)
		if out.Problem != "" {
			fmt.Printf("         (%s)\n", out.Problem)
		}
		if out.QueueDir != "" {
			fmt.Printf("queue:   %d waiting, %d failed\n", out.Queued, out.Failed)
		}
		return code
	}
	mark := "✓"
	if !r.OK {
		mark = "✗"
	}
	fmt.Printf("relay:   %s running\n", r.Version)
	if mine := out.ThisVersion; r.Version != mine {
		// After an update the service runs the old binary until it is
		// restarted; on Windows it runs its own copy until installed again.
		fmt.Printf("         (this icloud-relay is %s: %s)\n", mine, updateAdvice)
	}
	fmt.Printf("\n%s %s\n", mark, r.Headline)
	row := func(k, v string) {
		if v != "" {
			fmt.Printf("  %-14s %s\n", k, v)
		}
	}
	if !r.OK {
		if r.Since != nil {
			row("since", r.Since.Local().Format("Mon 2 Jan 15:04:05"))
		}
		if r.Error != "" {
			row("what happened", r.Error)
		}
		row("what to do", r.Remedy)
		row("the relay", r.Doing)
	}
	fmt.Println()
	port := fmt.Sprint(r.Port)
	if r.PortNote != "" {
		port = r.PortNote
	}
	row("port", port)
	last := "none yet"
	if r.LastDelivery != nil {
		last = age(*r.LastDelivery) + " ago"
	}
	row("last delivery", last)
	today := fmt.Sprintf("%d messages, %d recipients", r.SentToday, r.RecipientsToday)
	if r.DailyLimit > 0 {
		today += fmt.Sprintf(" (iCloud allows about %d a day)", r.DailyLimit)
	}
	row("last 24 hours", today)
	queued := fmt.Sprintf("%d waiting, %d failed", r.Queued, r.FailedCount)
	if r.OldestSeconds > 0 {
		queued += fmt.Sprintf(", oldest waiting %s", (time.Duration(r.OldestSeconds) * time.Second).String())
	}
	row("queue", queued)
	if f := r.LastFailure; f != nil && r.OK {
		row("last failure", fmt.Sprintf("%s (%s ago)", f.Error, age(f.At)))
		row("", f.Remedy)
	}
	row("status page", r.URL)
	return code
}
