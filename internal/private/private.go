// Package private keeps files and directories to their owner: the
// password file, a config that holds a password, the queue (everyone's
// mail, and control.json, the token that steers it). On Unix that is the
// mode (0600, 0700). On Windows modes mean nothing, and %ProgramData% lets
// every local user read what is made there: a private path gets an
// explicit, protected DACL instead, granting full control to SYSTEM, the
// Administrators and the account that runs the relay (or installs it),
// and nothing to anyone else; a directory's entries inherit it.
// On Unix a file may also be shared with the service account's group
// (Share): readable by root and the service, by no one else.
package private

// ServiceAccount is the unprivileged account (a user and a group of that
// name) a system service runs as where the packages create one (Linux):
// a file shared with its group (Share) is not exposed.
const ServiceAccount = "icloud-relay"
