package service

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	kservice "github.com/kardianos/service"

	"github.com/icloud-relay/icloud-relay/internal/private"
)

// Account is the unprivileged system account of the system service on
// Linux and macOS: the .deb and .rpm packages create it, and install uses
// it when it exists. On Windows it is VirtualAccount.
const Account = private.ServiceAccount

// Actions the service manager can be asked for.
var Actions = []string{"install", "uninstall", "start", "stop", "restart"}

// ErrNoManager means no supported service manager runs on this machine.
var ErrNoManager = errors.New("no service manager found (Windows SCM, launchd or systemd): run \"icloud-relay run --config FILE\" in the foreground, or start it from your own init system")

// ErrNeedAdmin means the action needs administrator rights.
var ErrNeedAdmin = errors.New("this needs administrator rights: run it as Administrator (Windows) or with sudo, or pass --user for a service of your own user")

// Definition describes the installed service: the binary runs
// "run --config ConfigPath", as a system service or, with User, a per-user one.
type Definition struct {
	ConfigPath string
	User       bool
	// Writable are the directories the relay writes (its queue and logs):
	// the system service on Linux may write nowhere else.
	Writable []string
	// LogFile is the relay's log; launchd keeps its standard error beside.
	LogFile string
	// Account is the unprivileged system account a system service runs as
	// (Linux, macOS: a user and group of that name; Windows: the virtual
	// account NT SERVICE\icloud-relay), which owns the queue and logs;
	// empty: the service manager's default (root).
	Account string
}

// args are what the service manager passes to the binary. --service: the
// process knows it runs under the service manager without guessing
// (Windows' guess fails under Wine, where the service manager's session
// is not 0).
func (d Definition) args(cfgPath string) []string {
	return []string{"run", "--config", cfgPath, "--service"}
}

// SystemdUnit is the unit file of the system service d for the binary exe:
// what install writes on Linux, and what the .deb and .rpm packages ship.
func (d Definition) SystemdUnit(exe string) string {
	return systemdUnit(exe, d.args(d.ConfigPath), d.Writable, d.ConfigPath, d.Account)
}

func (d Definition) config() (*kservice.Config, error) {
	exe, err := self()
	if err != nil {
		return nil, err
	}
	cfgPath, err := filepath.Abs(d.ConfigPath) // the service manager's working directory is not ours
	if err != nil {
		return nil, err
	}
	c := Config(d.args(cfgPath))
	c.Executable = exe
	var writable []string
	for _, w := range d.Writable {
		if abs, err := filepath.Abs(w); err == nil {
			writable = append(writable, abs)
		}
	}
	c.Option = kservice.KeyValue{
		"UserService": d.User,
		// Start at boot and come back after a crash.
		"Restart":                "on-failure",
		"RunAtLoad":              true,
		"KeepAlive":              true,
		"StartType":              "automatic",
		"OnFailure":              "restart",
		"OnFailureDelayDuration": "10s",
	}
	if d.LogFile != "" {
		// Used by launchd only; no braces either.
		c.Option["LaunchdConfig"] = launchdPlist(exe, c.Arguments, filepath.Join(filepath.Dir(d.LogFile), "launchd.stderr.log"), d.Account)
	}
	if !d.User {
		// Used by systemd only. kardianos/service parses it as a template:
		// it has no braces, so it is written as it is.
		c.Option["SystemdScript"] = systemdUnit(exe, c.Arguments, writable, cfgPath, d.Account)
	}
	return c, nil
}

// supported are the service managers the relay installs into. SysV init,
// upstart and the like are left out: in containers they "install" a script
// that nothing ever starts.
var supported = map[string]bool{"windows-service": true, "darwin-launchd": true, "linux-systemd": true}

// Supported says whether this machine runs a service manager install can
// use; else ErrNoManager.
func Supported() error {
	if p := kservice.Platform(); !supported[p] {
		if p == "" {
			p = "none"
		}
		return fmt.Errorf("%w (found: %s)", ErrNoManager, p)
	}
	return nil
}

// manage returns the service handle for d, or ErrNoManager.
func manage(d Definition) (kservice.Service, *kservice.Config, error) {
	c, err := d.config()
	if err != nil {
		return nil, nil, err
	}
	if err := Supported(); err != nil {
		return nil, nil, err
	}
	s, err := kservice.New(&program{}, c)
	if err != nil {
		return nil, nil, classify(err)
	}
	return s, c, nil
}

// Control performs action on the service.
func Control(action string, d Definition) error {
	s, c, err := manage(d)
	if err != nil {
		return err
	}
	if action == "install" {
		if _, err := os.Stat(c.Arguments[2]); err != nil {
			return fmt.Errorf("no config at %s: write one first (icloud-relay setup does it)", c.Arguments[2])
		}
		if err := prepareInstall(s, d, c); err != nil {
			return classify(err)
		}
	}
	after := func() {}
	if action == "uninstall" {
		after = prepareUninstall(d)
	}
	if err := kservice.Control(s, action); err != nil {
		return classify(err)
	}
	after()
	return nil
}

// self is this binary, links resolved: what a service runs of it.
func self() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", err
	}
	if real, err := filepath.EvalSymlinks(exe); err == nil {
		exe = real
	}
	return exe, nil
}

// Copy is the copy of this binary that the service d runs once installed,
// or "" when it runs this one: on Windows a system service runs a copy
// under Program Files when this one lies where users may change it.
func Copy(d Definition) string {
	exe, err := self()
	if err != nil {
		return ""
	}
	if run, err := serviceExecutable(d, exe); err == nil && run != exe {
		return run
	}
	return ""
}

// Status says whether the service is running, stopped or not installed.
func Status(d Definition) (string, error) {
	s, _, err := manage(d)
	if err != nil {
		return "", err
	}
	st, err := s.Status()
	switch {
	case errors.Is(err, kservice.ErrNotInstalled):
		return "not installed", nil
	case err != nil:
		return "", classify(err)
	case st == kservice.StatusRunning:
		return "running", nil
	case st == kservice.StatusStopped:
		return "stopped", nil
	}
	return "unknown", nil
}

// Platform names the service manager in use, e.g. "linux-systemd".
func Platform() string {
	if p := kservice.Platform(); p != "" {
		return p
	}
	return "none"
}

// classify turns the service manager's failures into errors that say what
// to do.
func classify(err error) error {
	msg := strings.ToLower(err.Error())
	switch {
	case errors.Is(err, kservice.ErrNoServiceSystemDetected),
		strings.Contains(msg, "executable file not found"),
		strings.Contains(msg, "system has not been booted with systemd"),
		strings.Contains(msg, "failed to connect to bus"),
		strings.Contains(msg, "no such file or directory") && strings.Contains(msg, "init.d"):
		return fmt.Errorf("%w (%v)", ErrNoManager, err)
	case errors.Is(err, os.ErrPermission), strings.Contains(msg, "permission denied"),
		strings.Contains(msg, "access is denied"), strings.Contains(msg, "operation not permitted"):
		return fmt.Errorf("%w (%v)", ErrNeedAdmin, err)
	}
	return err
}
