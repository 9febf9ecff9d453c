package service

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	kservice "github.com/kardianos/service"
)

func TestFailuresSayWhatToDo(t *testing.T) {
	cases := []struct {
		err  error
		want error
	}{
		{kservice.ErrNoServiceSystemDetected, ErrNoManager},
		{errors.New(`exec: "systemctl": executable file not found in $PATH`), ErrNoManager},
		{errors.New("System has not been booted with systemd as init system (PID 1). Can't operate."), ErrNoManager},
		{errors.New("Failed to connect to bus: No such file or directory"), ErrNoManager},
		{&os.PathError{Op: "open", Path: "/etc/systemd/system/icloud-relay.service", Err: os.ErrPermission}, ErrNeedAdmin},
		{errors.New("Access is denied."), ErrNeedAdmin},
		{errors.New("Interactive authentication required: Operation not permitted"), ErrNeedAdmin},
	}
	for _, c := range cases {
		if got := classify(c.err); !errors.Is(got, c.want) {
			t.Errorf("%v: got %v, want %v", c.err, got, c.want)
		}
	}
	other := errors.New("something else")
	if classify(other) != other {
		t.Error("unknown errors must pass through unchanged")
	}
}

func TestDefinitionRunsTheRelayWithAnAbsoluteConfig(t *testing.T) {
	c, err := Definition{ConfigPath: "relative/config.toml", User: true}.config()
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Arguments) != 4 || c.Arguments[0] != "run" || c.Arguments[1] != "--config" || !filepath.IsAbs(c.Arguments[2]) || c.Arguments[3] != "--service" {
		t.Fatalf("arguments %v: the service manager's working directory is not ours", c.Arguments)
	}
	if c.Option["UserService"] != true || c.Executable == "" {
		t.Fatalf("config %+v", c)
	}
}

// The account's name is the service's: Windows names a service's virtual
// account and its SID (which internal/private computes from Account) after
// the service.
func TestTheAccountIsNamedAfterTheService(t *testing.T) {
	if Account != Name {
		t.Fatalf("Account %q, service Name %q", Account, Name)
	}
}
