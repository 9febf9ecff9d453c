// Package config loads and validates icloud-relay's TOML configuration.
//
// Invariants: Load either returns a fully validated Config with every default
// filled in, or an error that names the file, the line and the key of every
// problem found (unknown keys included). The upstream password is held as a
// Secret, which never prints itself.
package config

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	toml "github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"
	"github.com/zalando/go-keyring"

	"github.com/icloud-relay/icloud-relay/internal/private"
	"github.com/icloud-relay/icloud-relay/internal/redact"
)

// Config is the whole configuration. Field tags are the TOML key names that
// DESIGN.md promises to users.
type Config struct {
	Listen   Listen   `toml:"listen"`
	Upstream Upstream `toml:"upstream"`
	Sender   Sender   `toml:"sender"`
	Queue    Queue    `toml:"queue"`
	Delivery Delivery `toml:"delivery"`
	Log      Log      `toml:"log"`
	Status   Status   `toml:"status"`

	// Path is the file the config came from ("" for defaults only).
	Path string `toml:"-"`
	// lines maps each key set in the file to its line, for KeyError.
	lines map[string]int
}

// KeyError returns an error about key that names the config file and the
// key's line there: for a problem found after loading (a queue.dir that
// cannot be written, say), which is as much a config error as a bad value.
func (c *Config) KeyError(key, format string, args ...any) *KeyError {
	return &KeyError{File: c.Path, Line: c.lines[key], Key: key, Msg: fmt.Sprintf(format, args...)}
}

// Listen configures the local SMTP listener.
type Listen struct {
	Addr           string   `toml:"addr"`
	TLSAddr        string   `toml:"tls_addr"`
	Allow          []string `toml:"allow"`
	Users          []User   `toml:"users"`
	StartTLS       bool     `toml:"starttls"`
	TLSCert        string   `toml:"tls_cert"`
	TLSKey         string   `toml:"tls_key"`
	Hostname       string   `toml:"hostname"`
	MaxMessageSize Size     `toml:"max_message_size"`
	MaxRecipients  int      `toml:"max_recipients"`
	MaxConnections int      `toml:"max_connections"`
	// MaxConnectionsPerClient caps one client address (an IPv6 /64).
	MaxConnectionsPerClient int      `toml:"max_connections_per_client"`
	Timeout                 Duration `toml:"timeout"`
	ReceivedHeader          bool     `toml:"received_header"`

	// AllowNets is Allow parsed; filled by Load.
	AllowNets []netip.Prefix `toml:"-"`
}

// User is a local SMTP AUTH account (not the iCloud account).
type User struct {
	Username string `toml:"username"`
	Password Secret `toml:"password"`
}

// Upstream configures the iCloud side.
type Upstream struct {
	Host            string   `toml:"host"`
	StartTLSPort    int      `toml:"starttls_port"`
	TLSPort         int      `toml:"tls_port"`
	Username        string   `toml:"username"`
	Password        Secret   `toml:"password"`
	PasswordEnv     string   `toml:"password_env"`
	PasswordFile    string   `toml:"password_file"`
	PasswordKeyring bool     `toml:"password_keyring"`
	CAFile          string   `toml:"ca_file"`
	HeloName        string   `toml:"helo_name"`
	ConnectTimeout  Duration `toml:"connect_timeout"`
	Timeout         Duration `toml:"timeout"`
	AttemptTimeout  Duration `toml:"attempt_timeout"`
	ReprobeInterval Duration `toml:"reprobe_interval"`
	// Connection reuse.
	IdleTimeout              Duration `toml:"idle_timeout"`
	MaxMessagesPerConnection int      `toml:"max_messages_per_connection"`
}

// Sender names the addresses the iCloud account may send from.
type Sender struct {
	Address string   `toml:"address"` // default: upstream.username
	Aliases []string `toml:"aliases"`
	Rewrite string   `toml:"rewrite"` // off, envelope or header
}

// Addresses returns the sender address followed by the aliases.
func (s Sender) Addresses() []string {
	return append([]string{s.Address}, s.Aliases...)
}

// Queue configures the durable spool.
type Queue struct {
	Dir string `toml:"dir"`
}

// Delivery configures workers and retry policy.
type Delivery struct {
	Workers       int      `toml:"workers"`
	SyncWindow    Duration `toml:"sync_window"`
	BulkGap       Duration `toml:"bulk_gap"`
	RetryMin      Duration `toml:"retry_min"`
	RetryMax      Duration `toml:"retry_max"`
	MaxAge        Duration `toml:"max_age"`
	ProbeInterval Duration `toml:"probe_interval"`
	AuthPause     Duration `toml:"auth_pause"`
	// NotifyFailures sends a short report to sender.address when a
	// message ends in the failed area.
	NotifyFailures bool `toml:"notify_failures"`
	// DailyLimit is iCloud's sending limit per rolling day (messages and
	// recipients); the relay warns at 80% and 95%.
	DailyLimit int `toml:"daily_limit"`
}

// Log configures logging.
type Log struct {
	Level    string `toml:"level"`
	Format   string `toml:"format"`
	File     string `toml:"file"`
	MaxSize  Size   `toml:"max_size"`
	MaxFiles int    `toml:"max_files"`
	// Stderr: with a file, write each line to standard error as well
	// (a terminal always gets them); otherwise each line is written once.
	Stderr bool `toml:"stderr"`
}

// Status configures the status page (and /metrics).
type Status struct {
	// Addr is where the page listens: a loopback address, or "" for no page.
	Addr string `toml:"addr"`
}

// Default returns the configuration used for every key the file leaves out.
func Default() Config {
	return Config{
		Listen: Listen{
			Addr:                    "127.0.0.1:2525",
			StartTLS:                true,
			Hostname:                "localhost",
			MaxMessageSize:          20 << 20,
			MaxRecipients:           500,
			MaxConnections:          100,
			MaxConnectionsPerClient: 50,
			Timeout:                 Duration(5 * time.Minute),
			ReceivedHeader:          true,
		},
		Sender: Sender{Rewrite: "header"},
		Upstream: Upstream{
			Host:                     "smtp.mail.me.com",
			StartTLSPort:             587,
			TLSPort:                  465,
			HeloName:                 defaultHeloName(),
			ConnectTimeout:           Duration(15 * time.Second),
			Timeout:                  Duration(60 * time.Second),
			AttemptTimeout:           Duration(30 * time.Minute),
			ReprobeInterval:          Duration(time.Hour),
			IdleTimeout:              Duration(30 * time.Second),
			MaxMessagesPerConnection: 100,
		},
		Queue: Queue{Dir: DefaultPaths(!IsAdmin()).Queue},
		Delivery: Delivery{
			Workers:       2,
			SyncWindow:    Duration(10 * time.Second),
			BulkGap:       Duration(time.Second),
			RetryMin:      Duration(30 * time.Second),
			RetryMax:      Duration(time.Hour),
			MaxAge:        Duration(72 * time.Hour),
			ProbeInterval: Duration(5 * time.Second),
			AuthPause:     Duration(time.Hour),
			DailyLimit:    1000,
		},
		Log:    Log{Level: "info", MaxSize: 10 << 20, MaxFiles: 5},
		Status: Status{Addr: "127.0.0.1:2580"},
	}
}

// defaultHeloName is the system's host name, or an address literal when the
// system calls itself "localhost", which servers may distrust.
func defaultHeloName() string {
	host, err := os.Hostname()
	if err != nil || host == "" || strings.EqualFold(host, "localhost") || strings.HasPrefix(strings.ToLower(host), "localhost.") {
		return "[127.0.0.1]"
	}
	return host
}

// KeyError is one problem with one key of the config file.
type KeyError struct {
	File string
	Line int // 0 when the key is absent from the file (a default or a missing key)
	Key  string
	Msg  string
}

func (e *KeyError) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		if e.Line > 0 {
			fmt.Fprintf(&b, ":%d", e.Line)
		}
		b.WriteString(": ")
	} else if e.Line > 0 {
		fmt.Fprintf(&b, "line %d: ", e.Line)
	}
	if e.Key != "" {
		b.WriteString(e.Key + ": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Load reads, decodes and validates the file at path, the upstream
// password included (read from its file, variable or keyring).
func Load(path string) (*Config, error) { return load(path, true) }

// LoadLocal is Load for the tools that only talk to the local relay or its
// queue (sendmail, queue, status): every key is checked, but the upstream
// password is not read from where it is kept, which their caller (PHP's
// www-data, a user's cron) may rightly be unable to read. Upstream.Password
// stays empty unless the config file holds it inline.
func LoadLocal(path string) (*Config, error) { return load(path, false) }

func load(path string, secret bool) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, &KeyError{File: path, Msg: fmt.Sprintf("cannot read config: %v", errors.Unwrap(err))}
	}
	return parse(data, path, secret)
}

// Parse decodes and validates a config document; file names it in errors.
func Parse(data []byte, file string) (*Config, error) { return parse(data, file, true) }

func parse(data []byte, file string, secret bool) (*Config, error) {
	cfg := Default()
	cfg.Path = file
	dec := toml.NewDecoder(bytes.NewReader(data)).DisallowUnknownFields()
	if err := dec.Decode(&cfg); err != nil {
		return nil, decodeError(err, file)
	}
	lines := keyLines(data)
	if err := cfg.validate(file, lines, secret); err != nil {
		return nil, err
	}
	cfg.lines = lines
	return &cfg, nil
}

func decodeError(err error, file string) error {
	var strict *toml.StrictMissingError
	if errors.As(err, &strict) {
		var errs []error
		for _, e := range strict.Errors {
			row, _ := e.Position()
			errs = append(errs, &KeyError{File: file, Line: row, Key: strings.Join(e.Key(), "."),
				Msg: "unknown key (see config.example.toml for the valid keys)"})
		}
		return errors.Join(errs...)
	}
	var de *toml.DecodeError
	if errors.As(err, &de) {
		row, _ := de.Position()
		return &KeyError{File: file, Line: row, Key: strings.Join(de.Key(), "."), Msg: plainDecodeError(de.Error())}
	}
	return &KeyError{File: file, Msg: err.Error()}
}

var typeMismatch = regexp.MustCompile(`cannot decode TOML (\w+) into struct field \S+ of type (\S+)`)

// plainDecodeError words go-toml's type errors for people, not Go programmers.
func plainDecodeError(msg string) string {
	m := typeMismatch.FindStringSubmatch(msg)
	if m == nil {
		return strings.TrimPrefix(msg, "toml: ")
	}
	want := map[string]string{"int": "a whole number", "bool": "true or false", "string": "a string in quotes",
		"[]string": "a list of strings, like [\"a\", \"b\"]", "config.Duration": "a duration in quotes, like \"30s\"",
		"config.Size": "a size, like 20971520 or \"20MiB\"", "config.Secret": "a string in quotes"}[m[2]]
	if want == "" {
		want = "of another type"
	}
	return fmt.Sprintf("the value is a TOML %s, but it must be %s", m[1], want)
}

// keyLines maps each dotted key in the document to the line it is set on, so
// that validation errors can point at the line to fix.
func keyLines(data []byte) map[string]int {
	lines := map[string]int{}
	p := &unstable.Parser{}
	p.Reset(data)
	var table []string
	for p.NextExpression() {
		e := p.Expression()
		switch e.Kind {
		case unstable.Table, unstable.ArrayTable:
			table = keyParts(e.Key())
		case unstable.KeyValue:
			it := e.Key()
			parts := append(append([]string{}, table...), keyParts(e.Key())...)
			if it.Next() {
				lines[strings.Join(parts, ".")] = p.Shape(it.Node().Raw).Start.Line
			}
		}
	}
	return lines
}

func keyParts(it unstable.Iterator) []string {
	var parts []string
	for it.Next() {
		parts = append(parts, string(it.Node().Data))
	}
	return parts
}

func (c *Config) validate(file string, lines map[string]int, secret bool) error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, &KeyError{File: file, Line: lines[key], Key: key, Msg: fmt.Sprintf(format, args...)})
	}

	// listen
	allow := c.Listen.Allow
	if len(allow) == 0 {
		allow = []string{"127.0.0.0/8", "::1/128"}
	}
	c.Listen.AllowNets = nil
	for _, a := range allow {
		pfx, err := parsePrefix(a)
		if err != nil {
			bad("listen.allow", "%q is not an address or network (example: \"192.168.1.0/24\")", a)
			continue
		}
		c.Listen.AllowNets = append(c.Listen.AllowNets, pfx)
	}
	checkExposure := func(key, addr string) {
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			bad(key, "%q is not host:port (example: \"127.0.0.1:2525\")", addr)
			return
		}
		if _, err := strconv.ParseUint(port, 10, 16); err != nil {
			bad(key, "port %q is not a number from 0 to 65535", port)
			return
		}
		if !isLoopbackHost(host) && (len(c.Listen.Allow) == 0 || len(c.Listen.Users) == 0) {
			bad(key, "%q is not a loopback address: listening beyond this machine needs both listen.allow (the networks that may connect) and [[listen.users]] (local SMTP logins), so the relay never becomes an open relay for your iCloud account", addr)
		}
	}
	checkExposure("listen.addr", c.Listen.Addr)
	if a := c.Status.Addr; a != "" {
		if host, port, err := net.SplitHostPort(a); err != nil {
			bad("status.addr", "%q is not host:port (example: \"127.0.0.1:2580\"; \"\" turns the page off)", a)
		} else if _, err := strconv.ParseUint(port, 10, 16); err != nil {
			bad("status.addr", "port %q is not a number from 0 to 65535", port)
		} else if !isLoopbackHost(host) {
			bad("status.addr", "%q is not a loopback address: the status page can retry and delete mail and has no login of its own, so it listens on this machine only (from elsewhere, use an SSH tunnel to it)", a)
		}
	}
	if c.Listen.TLSAddr != "" {
		checkExposure("listen.tls_addr", c.Listen.TLSAddr)
	}
	for i, u := range c.Listen.Users {
		if u.Username == "" || u.Password == "" {
			bad("listen.users", "entry %d needs both username and password", i+1)
		}
	}
	if (c.Listen.TLSCert == "") != (c.Listen.TLSKey == "") {
		bad("listen.tls_cert", "tls_cert and tls_key must be set together")
	}
	if c.Listen.MaxMessageSize < 1024 {
		bad("listen.max_message_size", "must be at least 1 KiB, got %d bytes", c.Listen.MaxMessageSize)
	}
	if c.Listen.MaxRecipients < 1 || c.Listen.MaxRecipients > 500 {
		bad("listen.max_recipients", "must be from 1 to 500 (iCloud's per-message limit), got %d", c.Listen.MaxRecipients)
	}
	positive(bad, "listen.timeout", c.Listen.Timeout)
	if c.Listen.MaxConnections < 1 {
		bad("listen.max_connections", "must be at least 1, got %d", c.Listen.MaxConnections)
	}
	if c.Listen.MaxConnectionsPerClient < 1 {
		bad("listen.max_connections_per_client", "must be at least 1, got %d", c.Listen.MaxConnectionsPerClient)
	}

	// upstream
	if c.Upstream.Host == "" {
		bad("upstream.host", "must not be empty")
	}
	portOK(bad, "upstream.starttls_port", c.Upstream.StartTLSPort)
	portOK(bad, "upstream.tls_port", c.Upstream.TLSPort)
	if c.Upstream.StartTLSPort == c.Upstream.TLSPort {
		bad("upstream.tls_port", "must differ from upstream.starttls_port (%d)", c.Upstream.StartTLSPort)
	}
	if c.Upstream.Username == "" {
		bad("upstream.username", "is required: your full iCloud address, e.g. \"name@icloud.com\"")
	} else if !strings.Contains(c.Upstream.Username, "@") {
		bad("upstream.username", "%q is not a full address: iCloud wants the whole address, e.g. \"%s@icloud.com\"", c.Upstream.Username, c.Upstream.Username)
	}
	if ke := c.resolvePassword(secret); ke != nil {
		bad(ke.Key, "%s", ke.Msg)
	}
	if c.Upstream.CAFile != "" {
		// Checked now, though the relay loads it only at its first
		// connection: a bad file should stop it at start, not later.
		if pem, err := readLimited(c.Upstream.CAFile, 16<<20); err != nil {
			bad("upstream.ca_file", "cannot read \"%s\": %v", c.Upstream.CAFile, err)
		} else if !x509.NewCertPool().AppendCertsFromPEM(pem) {
			bad("upstream.ca_file", "\"%s\" holds no PEM certificate", c.Upstream.CAFile)
		}
	}
	if c.Upstream.HeloName == "" || strings.EqualFold(c.Upstream.HeloName, "localhost") {
		bad("upstream.helo_name", "must be this machine's real host name, not %q (iCloud may distrust a bare \"localhost\")", c.Upstream.HeloName)
	}
	positive(bad, "upstream.connect_timeout", c.Upstream.ConnectTimeout)
	positive(bad, "upstream.timeout", c.Upstream.Timeout)
	positive(bad, "upstream.attempt_timeout", c.Upstream.AttemptTimeout)
	positive(bad, "upstream.reprobe_interval", c.Upstream.ReprobeInterval)
	if c.Upstream.IdleTimeout < 0 {
		bad("upstream.idle_timeout", "must not be negative (0 turns connection reuse off)")
	}
	if c.Upstream.MaxMessagesPerConnection < 1 {
		bad("upstream.max_messages_per_connection", "must be at least 1, got %d", c.Upstream.MaxMessagesPerConnection)
	}

	// sender
	if c.Sender.Address == "" {
		c.Sender.Address = c.Upstream.Username
	} else if !strings.Contains(c.Sender.Address, "@") {
		bad("sender.address", "%q is not an email address", c.Sender.Address)
	}
	for _, a := range c.Sender.Aliases {
		if !strings.Contains(a, "@") {
			bad("sender.aliases", "%q is not an email address", a)
		}
	}
	switch c.Sender.Rewrite {
	case "off", "envelope", "header":
	default:
		bad("sender.rewrite", "%q is not one of \"off\", \"envelope\", \"header\"", c.Sender.Rewrite)
	}

	// queue
	if c.Queue.Dir == "" {
		bad("queue.dir", "must not be empty")
	}

	// delivery
	if c.Delivery.Workers < 1 || c.Delivery.Workers > 16 {
		bad("delivery.workers", "must be from 1 to 16, got %d", c.Delivery.Workers)
	}
	if c.Delivery.SyncWindow < 0 {
		bad("delivery.sync_window", "must not be negative")
	}
	if c.Delivery.BulkGap < 0 {
		bad("delivery.bulk_gap", "must not be negative (0 turns the bulk rule off)")
	}
	positive(bad, "delivery.retry_min", c.Delivery.RetryMin)
	positive(bad, "delivery.retry_max", c.Delivery.RetryMax)
	if c.Delivery.RetryMax < c.Delivery.RetryMin {
		bad("delivery.retry_max", "must be at least delivery.retry_min (%s)", c.Delivery.RetryMin)
	}
	positive(bad, "delivery.max_age", c.Delivery.MaxAge)
	positive(bad, "delivery.probe_interval", c.Delivery.ProbeInterval)
	positive(bad, "delivery.auth_pause", c.Delivery.AuthPause)
	if c.Delivery.DailyLimit < 0 {
		bad("delivery.daily_limit", "must not be negative (0 turns the warnings off)")
	}

	// log
	switch c.Log.Level {
	case "trace", "debug", "info", "warn", "error":
	default:
		bad("log.level", "%q is not one of trace, debug, info, warn, error", c.Log.Level)
	}
	if c.Log.MaxFiles < 0 {
		bad("log.max_files", "must not be negative")
	}
	switch c.Log.Format {
	case "", "console", "json":
	default:
		bad("log.format", "%q is not \"console\" or \"json\"", c.Log.Format)
	}
	return errors.Join(errs...)
}

// KeyringService is the name the password is stored under in the OS
// credential store (macOS Keychain, Windows Credential Manager, Secret
// Service on Linux), with the iCloud address as the account.
const KeyringService = "icloud-relay"

// readLimited reads a file the config names, refusing one larger than
// limit: a wrong path such as /dev/zero must not make the relay read for
// ever. Errors leave out the path, which the caller names.
func readLimited(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, errors.Unwrap(err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		if u := errors.Unwrap(err); u != nil {
			err = u
		}
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("larger than %d bytes: not the file meant here", limit)
	}
	return b, nil
}

// resolvePassword checks that exactly one source of the upstream password
// is set and, with read, fills Upstream.Password from it.
func (c *Config) resolvePassword(read bool) *KeyError {
	u := &c.Upstream
	n := 0
	for _, set := range []bool{u.Password != "", u.PasswordEnv != "", u.PasswordFile != "", u.PasswordKeyring} {
		if set {
			n++
		}
	}
	switch {
	case n == 0:
		return &KeyError{Key: "upstream.password", Msg: "is required: set password, password_env, password_file or password_keyring to an app-specific password (appleid.apple.com → Sign-In and Security → App-Specific Passwords)"}
	case n > 1:
		return &KeyError{Key: "upstream.password", Msg: "set only one of password, password_env, password_file and password_keyring"}
	case !read:
		return nil
	case u.PasswordKeyring:
		v, err := keyring.Get(KeyringService, u.Username)
		if err != nil {
			return &KeyError{Key: "upstream.password_keyring", Msg: fmt.Sprintf("no password for %s in the OS credential store (%v): store it with icloud-relay setup --keyring, as the user the relay runs as", u.Username, err)}
		}
		u.Password = Secret(v)
	case u.PasswordEnv != "":
		v := os.Getenv(u.PasswordEnv)
		if v == "" {
			return &KeyError{Key: "upstream.password_env", Msg: fmt.Sprintf("environment variable %s is empty or not set", u.PasswordEnv)}
		}
		u.Password = Secret(v)
	case u.PasswordFile != "":
		b, err := readLimited(u.PasswordFile, 64<<10)
		if err != nil {
			return &KeyError{Key: "upstream.password_file", Msg: fmt.Sprintf("cannot read \"%s\": %v", u.PasswordFile, err)}
		}
		v := strings.TrimSpace(string(b))
		if v == "" {
			return &KeyError{Key: "upstream.password_file", Msg: fmt.Sprintf("\"%s\" is empty", u.PasswordFile)}
		}
		u.Password = Secret(v)
	}
	return nil
}

func positive(bad func(string, string, ...any), key string, d Duration) {
	switch {
	case d <= 0:
		bad(key, "must be a positive duration such as \"30s\" or \"5m\"")
	case d < Duration(time.Millisecond):
		// A bare TOML number lands here as nanoseconds.
		bad(key, "needs a unit: write it as a string such as \"30s\" or \"5m\"")
	}
}

func portOK(bad func(string, string, ...any), key string, p int) {
	if p < 1 || p > 65535 {
		bad(key, "must be a port from 1 to 65535, got %d", p)
	}
}

func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		return p.Masked(), err
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

func isLoopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}

// AddSecrets adds every secret in the config to r: the iCloud login and
// the local logins.
func (c *Config) AddSecrets(r *redact.Redactor) {
	r.AddLogin(c.Upstream.Username, c.Upstream.Password.Reveal())
	for _, u := range c.Listen.Users {
		r.AddLogin(u.Username, u.Password.Reveal())
	}
}

// Redactor returns a redactor for the config's secrets.
func (c *Config) Redactor() *redact.Redactor {
	r := redact.New()
	c.AddSecrets(r)
	return r
}

// DefaultConfigPath is where run looks for a config when --config is not
// given: the per-user config when it exists (or when not running as an
// administrator), else the system one.
func DefaultConfigPath() string {
	user := DefaultPaths(true).Config
	if _, err := os.Stat(user); err == nil || !IsAdmin() {
		return user
	}
	return DefaultPaths(false).Config
}

// ExposedSecrets lists warnings about secrets that other users of this
// machine can read: a config holding a password inline, or a password file,
// readable by group or others. (Windows permissions are not mode bits.)
func (c *Config) ExposedSecrets() []string {
	var out []string
	inline := c.Upstream.Password != "" && c.Upstream.PasswordEnv == "" && c.Upstream.PasswordFile == "" && !c.Upstream.PasswordKeyring || len(c.Listen.Users) > 0
	if c.Path != "" && inline {
		if who, err := private.Exposed(c.Path); err == nil && who != "" {
			out = append(out, fmt.Sprintf("%s holds a password, and %s", c.Path, who))
		}
	}
	if c.Upstream.PasswordFile != "" {
		if who, err := private.Exposed(c.Upstream.PasswordFile); err == nil && who != "" {
			out = append(out, fmt.Sprintf("the password file %s: %s", c.Upstream.PasswordFile, who))
		}
	}
	return out
}
