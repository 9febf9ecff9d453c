package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/zalando/go-keyring"

	"github.com/icloud-relay/icloud-relay/internal/private"
	"github.com/icloud-relay/icloud-relay/internal/testenv"
)

const minimal = `
[upstream]
username = "me@icloud.com"
password = "abcd-efgh-ijkl-mnop"
`

func TestDefaultsFillEverythingTheFileLeavesOut(t *testing.T) {
	cfg, err := Parse([]byte(minimal), "c.toml")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen.Addr != "127.0.0.1:2525" || cfg.Upstream.Host != "smtp.mail.me.com" ||
		cfg.Upstream.StartTLSPort != 587 || cfg.Upstream.TLSPort != 465 {
		t.Errorf("defaults wrong: %+v", cfg)
	}
	if cfg.Listen.MaxMessageSize != 20<<20 || cfg.Delivery.MaxAge.D() != 72*time.Hour || cfg.Delivery.RetryMin.D() != 30*time.Second {
		t.Errorf("defaults wrong: %+v", cfg)
	}
	if len(cfg.Listen.AllowNets) != 2 {
		t.Errorf("default allow should be loopback v4+v6, got %v", cfg.Listen.AllowNets)
	}
}

func TestErrorsNameKeyAndLine(t *testing.T) {
	cases := []struct {
		name, doc, want string
	}{
		{"unknown key", minimal + "[queue]\ndirr = \"/tmp/x\"\n", "c.toml:6: queue.dirr: unknown key"},
		{"bad duration", minimal + "[delivery]\nretry_min = \"soon\"\n", "c.toml:6"},
		{"bad port", minimal + "starttls_port = 70000\n", "c.toml:5: upstream.starttls_port: must be a port"},
		{"bad level", minimal + "[log]\nlevel = \"loud\"\n", "c.toml:6: log.level"},
		{"bad format", minimal + "[log]\nformat = \"xml\"\n", "c.toml:6: log.format"},
		{"name part only", "[upstream]\nusername = \"me\"\npassword = \"x-x-x-x\"\n", "c.toml:2: upstream.username: \"me\" is not a full address"},
		{"no password", "[upstream]\nusername = \"me@icloud.com\"\n", "upstream.password: is required"},
		{"two passwords", minimal + "password_env = \"X\"\n", "set only one of"},
		{"open relay", minimal + "[listen]\naddr = \"0.0.0.0:2525\"\n", "c.toml:6: listen.addr: \"0.0.0.0:2525\" is not a loopback address"},
		{"bad allow", minimal + "[listen]\nallow = [\"10.0.0.0/33\"]\n", "listen.allow"},
		{"bad size", minimal + "[listen]\nmax_message_size = \"huge\"\n", "c.toml:6"},
		{"syntax", "[upstream\n", "c.toml:1"},
		{"same ports", minimal + "tls_port = 587\n", "upstream.tls_port: must differ"},
		{"wrong type", minimal + "starttls_port = \"abc\"\n", "c.toml:5: upstream.starttls_port: the value is a TOML string, but it must be a whole number"},
		{"bare number duration", minimal + "[delivery]\nretry_min = 30\n", "c.toml:6: delivery.retry_min: needs a unit"},
	}
	notPEM := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(notPEM, []byte("not a certificate\n"), 0o644)
	cases = append(cases,
		struct{ name, doc, want string }{"CA file not PEM", minimal + fmt.Sprintf("ca_file = %q\n", notPEM), "c.toml:5: upstream.ca_file: \"" + notPEM + "\" holds no PEM certificate"},
		struct{ name, doc, want string }{"CA file missing", minimal + "ca_file = \"/nonexistent/ca.pem\"\n", "c.toml:5: upstream.ca_file: cannot read"})
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse([]byte(c.doc), "c.toml")
			if err == nil {
				t.Fatalf("no error for:\n%s", c.doc)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q does not contain %q", err, c.want)
			}
		})
	}
}

func TestSeveralErrorsAreAllReported(t *testing.T) {
	_, err := Parse([]byte("[upstream]\nusername = \"me\"\n[log]\nlevel = \"x\"\n"), "c.toml")
	for _, want := range []string{"upstream.username", "upstream.password", "log.level"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v lacks %s", err, want)
		}
	}
	var ke *KeyError
	if !errors.As(err, &ke) {
		t.Errorf("errors should be *KeyError, got %T", err)
	}
}

func TestNonLoopbackNeedsAllowAndUsers(t *testing.T) {
	doc := minimal + `[listen]
addr = "0.0.0.0:2525"
allow = ["192.168.1.0/24"]
[[listen.users]]
username = "scanner"
password = "scanner-secret"
`
	cfg, err := Parse([]byte(doc), "c.toml")
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Listen.Users) != 1 || cfg.Listen.AllowNets[0].String() != "192.168.1.0/24" {
		t.Errorf("got %+v", cfg.Listen)
	}
	if _, err := Parse([]byte(minimal+"[listen]\naddr = \"0.0.0.0:2525\"\nallow = [\"192.168.1.0/24\"]\n"), "c.toml"); err == nil {
		t.Error("allow without users must be refused")
	}
}

func TestPasswordSources(t *testing.T) {
	t.Setenv("RELAY_TEST_PW", "from-env-pass")
	cfg, err := Parse([]byte("[upstream]\nusername = \"me@icloud.com\"\npassword_env = \"RELAY_TEST_PW\"\n"), "c.toml")
	if err != nil || cfg.Upstream.Password.Reveal() != "from-env-pass" {
		t.Fatalf("env: %v %q", err, cfg.Upstream.Password.Reveal())
	}
	f := filepath.Join(t.TempDir(), "pw")
	os.WriteFile(f, []byte("from-file-pass\n"), 0o600)
	cfg, err = Parse([]byte(fmt.Sprintf("[upstream]\nusername = \"me@icloud.com\"\npassword_file = %q\n", f)), "c.toml")
	if err != nil || cfg.Upstream.Password.Reveal() != "from-file-pass" {
		t.Fatalf("file: %v", err)
	}
	_, err = Parse([]byte("[upstream]\nusername = \"me@icloud.com\"\npassword_env = \"RELAY_TEST_UNSET\"\n"), "c.toml")
	if err == nil || !strings.Contains(err.Error(), "upstream.password_env") {
		t.Fatalf("unset env: %v", err)
	}
}

func TestSecretNeverPrints(t *testing.T) {
	cfg, err := Parse([]byte(minimal), "c.toml")
	if err != nil {
		t.Fatal(err)
	}
	j, _ := json.Marshal(cfg)
	for _, s := range []string{fmt.Sprint(cfg), fmt.Sprintf("%+v", cfg), fmt.Sprintf("%#v", cfg.Upstream), string(j)} {
		if strings.Contains(s, "abcd-efgh-ijkl-mnop") {
			t.Fatalf("secret printed: %s", s)
		}
	}
}

func TestExampleConfigIsValidAndComplete(t *testing.T) {
	data, err := os.ReadFile("../config.example.toml")
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("ICLOUD_APP_PASSWORD", "abcd-efgh-ijkl-mnop")
	// The example names password_env, so it parses once the variable is set.
	if _, err := Parse(data, "config.example.toml"); err != nil {
		t.Fatalf("config.example.toml does not parse: %v", err)
	}
	// Every key the program knows appears in the example.
	for _, key := range allKeys() {
		parts := strings.Split(key, ".")
		if !strings.Contains(string(data), parts[len(parts)-1]+" =") {
			t.Errorf("config.example.toml does not document %s", key)
		}
	}
}

// allKeys lists every dotted key of Config from its toml tags.
func allKeys() []string {
	var keys []string
	var walk func(prefix string, t reflect.Type)
	walk = func(prefix string, t reflect.Type) {
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			tag := f.Tag.Get("toml")
			if tag == "" || tag == "-" {
				continue
			}
			ft := f.Type
			if ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				walk(prefix+tag+".", ft)
				continue
			}
			keys = append(keys, prefix+tag)
		}
	}
	walk("", reflect.TypeOf(Config{}))
	return keys
}

func TestReadableSecretsAreReported(t *testing.T) {
	if testenv.UnderWine() {
		t.Skip("Wine shows a file's Unix mode as its DACL, so a DACL set cannot be read back; internal/private's TestPrivateDACL checks the DACLs as built")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "c.toml")
	os.WriteFile(path, []byte(minimal), 0o644)
	cfg, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if w := cfg.ExposedSecrets(); len(w) != 1 || !strings.Contains(w[0], "holds a password") {
		t.Fatalf("warnings %v", w)
	}
	private.Restrict(path)
	if w := cfg.ExposedSecrets(); len(w) != 0 {
		t.Fatalf("owner-only config still reported: %v", w)
	}
	pw := filepath.Join(dir, "pw")
	os.WriteFile(pw, []byte("abcd-efgh-ijkl-mnop"), 0o640)
	cfg, _ = Parse([]byte(fmt.Sprintf("[upstream]\nusername = \"me@icloud.com\"\npassword_file = %q\n", pw)), path)
	if w := cfg.ExposedSecrets(); len(w) != 1 || !strings.Contains(w[0], "password file") {
		t.Fatalf("warnings %v", w)
	}
}

func TestPasswordFromTheOSCredentialStore(t *testing.T) {
	keyring.MockInit()
	doc := "[upstream]\nusername = \"me@icloud.com\"\npassword_keyring = true\n"
	if _, err := Parse([]byte(doc), "c.toml"); err == nil || !strings.Contains(err.Error(), "c.toml:3: upstream.password_keyring: no password for me@icloud.com") {
		t.Fatalf("missing entry: %v", err)
	}
	keyring.Set(KeyringService, "me@icloud.com", "from-keyring-pw")
	cfg, err := Parse([]byte(doc), "c.toml")
	if err != nil || cfg.Upstream.Password.Reveal() != "from-keyring-pw" {
		t.Fatalf("got %v", err)
	}
}

// A path to something endless (here /dev/zero) is refused, not read for ever.
func TestConfigFilesAreReadWithALimit(t *testing.T) {
	if _, err := os.Stat("/dev/zero"); err != nil {
		testenv.Skip(t, "no /dev/zero here")
	}
	for _, c := range []struct{ doc, want string }{
		{"[upstream]\nusername = \"me@icloud.com\"\npassword_file = \"/dev/zero\"\n", "upstream.password_file: cannot read \"/dev/zero\": larger than"},
		{minimal + "ca_file = \"/dev/zero\"\n", "upstream.ca_file: cannot read \"/dev/zero\": larger than"},
	} {
		if _, err := Parse([]byte(c.doc), "c.toml"); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("got %v, want %q", err, c.want)
		}
	}
}

// The local tools (sendmail, queue, status) load the config without the
// upstream password's source: a caller that cannot read the password file,
// or lacks the variable, still gets a working config; every other key is
// checked as ever.
func TestLoadLocalNeedsNoSecret(t *testing.T) {
	dir := t.TempDir()
	for _, source := range []string{
		fmt.Sprintf("password_file = %q\n", filepath.Join(dir, "no-such-file")), // %q: a Windows path's backslashes escaped for TOML
		"password_env = \"ICLOUD_RELAY_TEST_UNSET_VARIABLE\"\n",
	} {
		path := filepath.Join(dir, "c.toml")
		os.WriteFile(path, []byte("[upstream]\nusername = \"me@icloud.com\"\n"+source), 0o644)
		if _, err := Load(path); err == nil {
			t.Fatalf("Load read a password that is not there (%s)", source)
		}
		cfg, err := LoadLocal(path)
		if err != nil {
			t.Fatalf("LoadLocal with %s: %v", source, err)
		}
		if cfg.Upstream.Password != "" {
			t.Fatal("LoadLocal filled in a password")
		}
	}
	path := filepath.Join(dir, "bad.toml")
	os.WriteFile(path, []byte("[upstream]\nusername = \"me@icloud.com\"\npassword_env = \"X\"\n[listen]\naddr = \"nonsense\"\n"), 0o644)
	if _, err := LoadLocal(path); err == nil || !strings.Contains(err.Error(), "listen.addr") {
		t.Fatalf("LoadLocal let a bad key through: %v", err)
	}
}
