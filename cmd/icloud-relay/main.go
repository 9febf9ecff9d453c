// Command icloud-relay relays mail from local clients to iCloud Mail.
package main

import (
	"os"
)

func main() {
	os.Exit(dispatch(os.Args[1:]))
}
