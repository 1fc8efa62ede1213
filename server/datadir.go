package server

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// lockFile is the file in a data directory that the serve holding the
// directory keeps locked (flock), with its PID inside.
const lockFile = "serve.lock"

// ErrDataDirInUse is returned by LockDataDir for a data directory another
// serve holds.
var ErrDataDirInUse = errors.New("data directory in use")

// DataDirLock is a serve's hold on its data directory: no other serve may
// run on it (and so adopt, and on exit stop, its PostgreSQL) until it is
// released. The kernel releases it when the process exits, however it
// exits.
type DataDirLock struct {
	f *os.File
}

// LockDataDir creates dataDir if needed and takes its lock without
// waiting, recording this process's PID. It fails, naming the holder's
// PID, when another process holds it.
func LockDataDir(dataDir string) (*DataDirLock, error) {
	if err := makeDataDir(dataDir); err != nil {
		return nil, err
	}
	path := filepath.Join(dataDir, lockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		b, _ := os.ReadFile(path)
		f.Close()
		if !errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("data directory: lock %s: %w", path, err)
		}
		holder := "its PID not yet recorded"
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 0 {
			holder = "PID " + strconv.Itoa(pid)
		}
		return nil, fmt.Errorf("%w: %s is in use by argus-server serve (%s); stop that one, or give this one its own --data-dir", ErrDataDirInUse, dataDir, holder)
	}
	err = f.Truncate(0)
	if err == nil {
		_, err = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("data directory: %w", err)
	}
	return &DataDirLock{f: f}, nil
}

// Release gives the data directory up.
func (l *DataDirLock) Release() error {
	if l == nil || l.f == nil {
		return nil
	}
	_ = l.f.Truncate(0)
	err := l.f.Close() // closing the only descriptor drops the flock
	l.f = nil
	return err
}

// makeDataDir creates the data directory. As root the cluster runs as
// postgres, which must pass through it (0711: traverse, not list).
func makeDataDir(dataDir string) error {
	mode := os.FileMode(0o700)
	if os.Geteuid() == 0 {
		mode = 0o711
	}
	if err := os.MkdirAll(dataDir, mode); err != nil {
		return fmt.Errorf("data directory: %w", err)
	}
	return nil
}
