//go:build linux

package service

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/icloud-relay/icloud-relay/internal/testenv"
)

// The system unit passes systemd's own checks, and its exposure score
// (systemd-analyze security, offline) is low: the relay gets no
// capability, a read-only system but for its queue and logs, and only
// the address families and system calls a network service needs.
func TestSystemdUnitIsHardened(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		testenv.Skip(t, "systemd-analyze is not installed (Debian's systemd package has it)")
	}
	dir := t.TempDir()
	exe := filepath.Join(dir, "icloud-relay")
	os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755)
	unit := systemdUnit(exe, []string{"run", "--config", "/etc/icloud-relay/config.toml", "--service"},
		[]string{"/var/lib/icloud-relay/queue", "/var/log/icloud relay"}, "/etc/icloud-relay/config.toml", "")
	for _, want := range []string{"ProtectSystem=strict", "ProtectHome=yes", `ReadWritePaths=-/var/lib/icloud-relay/queue -"/var/log/icloud relay"`,
		"NoNewPrivileges=yes", "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX", "--service"} {
		if !strings.Contains(unit, want) {
			t.Errorf("unit lacks %q:\n%s", want, unit)
		}
	}
	path := filepath.Join(dir, "icloud-relay.service")
	os.WriteFile(path, []byte(unit), 0o644)
	if out, err := exec.Command(analyze, "verify", path).CombinedOutput(); err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	score := func(path string) float64 {
		t.Helper()
		out, _ := exec.Command(analyze, "security", "--offline=true", path).CombinedOutput()
		m := regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+)`).FindSubmatch(out)
		if m == nil {
			t.Fatalf("no exposure level in:\n%s", out)
		}
		f, _ := strconv.ParseFloat(string(m[1]), 64)
		return f
	}
	// What kardianos/service writes by default, for comparison.
	plain := filepath.Join(dir, "plain.service")
	os.WriteFile(plain, []byte("[Unit]\nDescription=x\n[Service]\nExecStart="+exe+" run\nRestart=always\n[Install]\nWantedBy=multi-user.target\n"), 0o644)
	before, after := score(plain), score(path)
	t.Logf("systemd-analyze security exposure: %.1f for a plain unit, %.1f for ours", before, after)
	if after > 3.0 {
		t.Fatalf("exposure %.1f, want 3.0 or less", after)
	}
	// A config in a home directory is still readable.
	if u := systemdUnit(exe, nil, []string{"/root/q"}, "/root/c.toml", ""); !strings.Contains(u, "ProtectHome=read-only") {
		t.Fatalf("a config under /root needs ProtectHome=read-only:\n%s", u)
	}
}
