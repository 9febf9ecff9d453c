package service

import (
	"fmt"
	"path/filepath"
	"strings"
)

// systemdUnit is the unit file of the system service on Linux: the relay
// needs no privilege (it listens on 2525, sends out over TCP and writes
// its queue and logs), so the unit takes away what it does not need and
// lets it write only in writable (the queue and log directories). A
// directory that does not exist yet is not an error ("-"). With an
// account it runs as that user and group instead of root.
func systemdUnit(exe string, args, writable []string, configPath, account string) string {
	home := "yes"
	for _, p := range append([]string{exe, configPath}, writable...) {
		if under(p, "/home", "/root", "/run/user") {
			home = "read-only" // the config (or queue) lives in a home directory
		}
	}
	var rw []string
	for _, w := range writable {
		rw = append(rw, "-"+systemdQuote(w))
	}
	runAs := ""
	if account != "" {
		runAs = fmt.Sprintf("User=%s\nGroup=%s\n", systemdQuote(account), systemdQuote(account))
	}
	cmd := []string{systemdQuote(exe)}
	for _, a := range args {
		cmd = append(cmd, systemdQuote(a))
	}
	return fmt.Sprintf(`[Unit]
Description=%s
Documentation=https://github.com/icloud-relay/icloud-relay
Wants=network-online.target
After=network-online.target
ConditionFileIsExecutable=%s

[Service]
%sExecStart=%s
Restart=on-failure
RestartSec=10
UMask=0077
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
ProtectSystem=strict
ProtectHome=%s
ReadWritePaths=%s
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
ProcSubset=pid
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
RemoveIPC=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
SystemCallErrorNumber=EPERM

[Install]
WantedBy=multi-user.target
`, "iCloud Mail relay", systemdQuote(exe), runAs, strings.Join(cmd, " "), home, strings.Join(rw, " "))
}

func under(p string, dirs ...string) bool {
	for _, d := range dirs {
		if rel, err := filepath.Rel(d, p); err == nil && !strings.HasPrefix(rel, "..") {
			return true
		}
	}
	return false
}

// systemdQuote quotes a word for a unit file: specifiers (%) doubled, and
// double quotes around a word with a space, quote or backslash.
func systemdQuote(s string) string {
	s = strings.ReplaceAll(s, "%", "%%")
	if !strings.ContainsAny(s, " \t\"'\\") {
		return s
	}
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}
