// Command icloud-relay relays mail from local clients to iCloud Mail.
package main

import (
	"os"
	"path/filepath"
	"strings"
)

func main() {
	// Linked or copied as "sendmail", it behaves as sendmail; as "mailq", it
	// lists the queue as sendmail -bp does.
	switch strings.TrimSuffix(filepath.Base(os.Args[0]), ".exe") {
	case "sendmail":
		os.Exit(sendmailCmd(os.Args[1:]))
	case "mailq":
		os.Exit(sendmailCmd(append([]string{"-bp"}, os.Args[1:]...)))
	}
	os.Exit(dispatch(os.Args[1:]))
}
