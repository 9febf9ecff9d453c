package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/icloud-relay/icloud-relay/config"
	"github.com/icloud-relay/icloud-relay/internal/private"
	"github.com/icloud-relay/icloud-relay/relay/queue"
	"github.com/icloud-relay/icloud-relay/service"
)

// serviceCmd returns the command for one service-manager action.
func serviceCmd(action string) func([]string) int {
	return func(args []string) int {
		fs := flag.NewFlagSet(action, flag.ContinueOnError)
		user := fs.Bool("user", false, "a service of the current user (launchd agent, systemd user unit) instead of a system one")
		cfgPath := fs.String("config", "", "config file (default: the per-OS location)")
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
			return statusCmd(def)
		}
		var cfg *config.Config
		if action == "install" {
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
			printInstalled(cfg, *user)
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
	"status":    "Says whether the service runs, and what the queue holds.",
}

// serviceDefinition is the service that runs cfg. A system service runs as
// the unprivileged service account where there is one (Linux, after the
// .deb or .rpm made it): it gets its queue and logs, and may read the
// password, which stays hidden from everyone else.
func serviceDefinition(cfg *config.Config, user bool) (service.Definition, error) {
	def := service.Definition{ConfigPath: cfg.Path, User: user, LogFile: serviceLogFile(cfg, user)}
	def.Writable = []string{cfg.Queue.Dir, filepath.Dir(def.LogFile)}
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
	if info, err := os.Stat(cfg.Path); err == nil && info.Mode().Perm()&0o044 == 0 {
		secrets = append(secrets, cfg.Path) // a config private to root holds a secret
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

func printInstalled(cfg *config.Config, user bool) {
	logs := serviceLogFile(cfg, user)
	fmt.Printf("Installed the icloud-relay service (%s).\n\n", service.Platform())
	fmt.Printf("  config  %s\n  queue   %s\n  logs    %s\n\n", cfg.Path, cfg.Queue.Dir, logs)
	flag := ""
	if user {
		flag = " --user"
	}
	fmt.Printf("Next: icloud-relay start%s, then icloud-relay status%s and icloud-relay doctor --config %s\n", flag, flag, cfg.Path)
}

func statusCmd(def service.Definition) int {
	st, err := service.Status(def)
	if err != nil {
		fmt.Fprintf(os.Stderr, "icloud-relay status: %v\n", err)
		if errors.Is(err, service.ErrNoManager) {
			st = "unavailable (no service manager)"
		} else {
			return exitFailure
		}
	}
	fmt.Printf("service: %s\n", st)
	if cfg, err := config.LoadLocal(def.ConfigPath); err == nil {
		if q, err := queue.Open(cfg.Queue.Dir); err == nil {
			active, _ := q.Active()
			failed, _ := q.Failed()
			line := fmt.Sprintf("queue:   %d waiting, %d failed", len(active), len(failed))
			if len(active) > 0 {
				line += fmt.Sprintf(", oldest waiting %s", time.Since(active[0].Received).Round(time.Second))
			}
			fmt.Println(line)
		}
	}
	if st != "running" {
		return exitFailure
	}
	return exitOK
}
