//go:build windows

package queue

// syncDir is a no-op on Windows: NTFS journals renames and directories cannot
// be opened for flushing.
func syncDir(string) error { return nil }
