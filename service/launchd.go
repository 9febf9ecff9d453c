package service

import (
	"bytes"
	"encoding/xml"
)

// launchdPlist is the property list of the launchd daemon (or, with
// --user, agent): started at load, started again when it exits with an
// error, the relay's standard error kept in stderrPath (the log proper is
// the relay's own file). A daemon with an account runs as that user and
// group instead of root.
func launchdPlist(exe string, args []string, stderrPath, account string) string {
	var b bytes.Buffer
	esc := func(s string) string {
		var e bytes.Buffer
		xml.EscapeText(&e, []byte(s))
		return e.String()
	}
	b.WriteString(`<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
	<key>Label</key>
	<string>` + esc(Name) + `</string>
	<key>ProgramArguments</key>
	<array>
		<string>` + esc(exe) + `</string>
`)
	for _, a := range args {
		b.WriteString("\t\t<string>" + esc(a) + "</string>\n")
	}
	b.WriteString(`	</array>
	<key>RunAtLoad</key>
	<true/>
	<key>KeepAlive</key>
	<dict>
		<key>SuccessfulExit</key>
		<false/>
	</dict>
	<key>ThrottleInterval</key>
	<integer>10</integer>
	<key>ProcessType</key>
	<string>Background</string>
	<key>StandardErrorPath</key>
	<string>` + esc(stderrPath) + `</string>
`)
	if account != "" {
		b.WriteString("\t<key>UserName</key>\n\t<string>" + esc(account) + "</string>\n\t<key>GroupName</key>\n\t<string>" + esc(account) + "</string>\n")
	}
	b.WriteString(`</dict>
</plist>
`)
	return b.String()
}
