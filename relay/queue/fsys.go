package queue

import (
	"io"
	"io/fs"
	"os"
)

// fileSystem is the handful of file operations the queue's promises rest
// on: what is written, synced, renamed and removed, and in which order.
// The queue uses the operating system's (osFS); the tests put a recording
// one in its place to check the order of every step of a commit, a
// removal and a move to the failed area, which no crash test can see (a
// killed process loses no written page; only a power cut would).
type fileSystem interface {
	OpenFile(name string, flag int, perm fs.FileMode) (file, error)
	CreateTemp(dir, pattern string) (file, error)
	Rename(oldpath, newpath string) error
	Remove(name string) error
	SyncDir(dir string) error
}

// file is what the queue does with a file it writes.
type file interface {
	io.Writer
	io.Closer
	Sync() error
	Name() string
	Stat() (fs.FileInfo, error)
}

type osFS struct{}

func (osFS) OpenFile(name string, flag int, perm fs.FileMode) (file, error) {
	return os.OpenFile(name, flag, perm)
}
func (osFS) CreateTemp(dir, pattern string) (file, error) { return os.CreateTemp(dir, pattern) }
func (osFS) Rename(oldpath, newpath string) error         { return os.Rename(oldpath, newpath) }
func (osFS) Remove(name string) error                     { return os.Remove(name) }
func (osFS) SyncDir(dir string) error                     { return syncDir(dir) }
