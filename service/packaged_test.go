//go:build linux

package service

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/icloud-relay/icloud-relay/config"
)

var update = flag.Bool("update", false, "rewrite packaging/linux/icloud-relay.service")

// The unit the .deb and .rpm packages ship (.goreleaser.yaml) is the one
// install writes for the system service, run as the package's account:
// one unit, not two that drift apart. go test ./service -run Packaged
// -update rewrites it.
func TestThePackagedUnitIsTheInstalledOne(t *testing.T) {
	paths := config.DefaultPaths(false)
	d := Definition{ConfigPath: paths.Config, Account: Account,
		Writable: []string{paths.Queue, filepath.Dir(paths.Log)}}
	unit := d.SystemdUnit("/usr/bin/icloud-relay")
	file := filepath.Join("..", "packaging", "linux", "icloud-relay.service")
	if *update {
		if err := os.WriteFile(file, []byte(unit), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	have, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if string(have) != unit {
		t.Fatalf("%s is not the unit install writes (go test ./service -run Packaged -update):\n%s", file, unit)
	}
	for _, want := range []string{"User=icloud-relay\n", "Group=icloud-relay\n", "ReadWritePaths=-/var/lib/icloud-relay/queue -/var/log/icloud-relay\n",
		"ExecStart=/usr/bin/icloud-relay run --config /etc/icloud-relay/config.toml --service\n"} {
		if !strings.Contains(unit, want) {
			t.Errorf("packaged unit lacks %q", want)
		}
	}
}
