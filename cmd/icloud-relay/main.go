// Command icloud-relay relays mail from local clients to iCloud Mail.
package main

import (
	"os"
	"path/filepath"
	"strings"
)

func main() {
	// Linked or copied as "sendmail", it behaves as sendmail.
	if name := strings.TrimSuffix(filepath.Base(os.Args[0]), ".exe"); name == "sendmail" {
		os.Exit(sendmailCmd(os.Args[1:]))
	}
	os.Exit(dispatch(os.Args[1:]))
}
