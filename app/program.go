package app

import (
	"context"
	"fmt"
	"io"
	"reflect"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/icloud-relay/icloud-relay/config"
	"github.com/icloud-relay/icloud-relay/internal/redact"
	"github.com/icloud-relay/icloud-relay/logging"
	"github.com/icloud-relay/icloud-relay/upstream"
)

// Checks runs the troubleshooting checklist for cfg (the doctor, which
// builds on this package), telling begin of a step that starts and done
// of each step decided, and says whether mail can flow.
type Checks func(ctx context.Context, cfg *config.Config, begin func(name string), done func(step any)) bool

// LogFactory makes the logger a config's [log] section asks for; the
// closer closes its file.
type LogFactory func(*config.Config) (zerolog.Logger, io.Closer, error)

// Program is the relay as the service manager and the command line drive
// it: Start and Stop, and Reload to take up an edited config file without
// losing queued mail (the queue stays on disk; the new relay picks it up).
type Program struct {
	path string
	logs LogFactory
	red  *redact.Redactor // the log's: a reloaded config's secrets are added to it
	// Events, when set before Start, are the last log lines the status page
	// shows: the log factory writes them there too, across reloads.
	Events *logging.Ring
	// Checks, when set before Start, is the status page's "Run checks".
	Checks Checks

	mu     sync.Mutex
	cfg    *config.Config
	log    zerolog.Logger
	closer io.Closer
	cur    *App
}

// NewProgram returns a program for the config at path, already loaded as
// cfg, logging as logs makes it for each config (a reload may change
// [log]), with output that red masks. It opens the log at once: an
// unusable log file is an error here, before anything starts.
func NewProgram(path string, cfg *config.Config, logs LogFactory, red *redact.Redactor) (*Program, error) {
	log, closer, err := logs(cfg)
	if err != nil {
		return nil, err
	}
	return &Program{path: path, logs: logs, red: red, cfg: cfg, log: log, closer: closer}, nil
}

// Log is the program's current logger.
func (p *Program) Log() zerolog.Logger {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log
}

// Close closes the log.
func (p *Program) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closer.Close()
}

// Start starts the relay. It does not block.
func (p *Program) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	a, err := p.newApp(p.cfg, p.log)
	if err != nil {
		return err
	}
	if err := a.Start(); err != nil {
		return err
	}
	p.cur = a
	return nil
}

// newApp builds a relay whose control API can ask for a reload.
func (p *Program) newApp(cfg *config.Config, log zerolog.Logger) (*App, error) {
	a, err := New(cfg, log, p.red)
	if err == nil {
		a.reload = func() { p.Reload() }
		a.events, a.checks = p.Events, p.Checks
	}
	return a, err
}

// Stop stops the relay gracefully within ctx.
func (p *Program) Stop(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cur == nil {
		return nil
	}
	err := p.cur.Stop(ctx)
	p.cur = nil
	return err
}

// Reload reads the config file again and applies all of it: a new relay
// with the new settings replaces the running one ([log] included: level,
// format and file), keeping what the old one learned about the ports, and
// one log line says which sections changed. A config with errors is
// reported and the running relay keeps going. A paused delivery resumes,
// since the config may fix what paused it. (A short gap in listening loses
// nothing: a client that connects in it tries again.)
func (p *Program) Reload() error {
	cfg, err := config.Load(p.path)
	if err != nil {
		log := p.Log()
		log.Error().Err(err).Str(logging.KeyStage, "config").
			Str(logging.KeyRemedy, "Fix the config file at the line named, then reload again (icloud-relay reload, or SIGHUP).").
			Msg("config reload refused: the file has errors; the relay keeps running with the old config")
		return err
	}
	cfg.AddSecrets(p.red) // before anything of the new config can be logged
	log, closer, err := p.logs(cfg)
	if err != nil {
		old := p.Log()
		old.Error().Err(err).Str(logging.KeyStage, "config").
			Str(logging.KeyRemedy, "Fix the [log] section (is the log file's directory writable by the relay?), then reload again.").
			Msg("config reload refused: the new log settings cannot be used; the relay keeps running with the old config")
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	var ports upstream.PortMemory
	if p.cur != nil {
		ports = p.cur.PortMemory()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		p.cur.Stop(ctx)
		cancel()
		p.cur = nil
	}
	a, err := p.newApp(cfg, log)
	if err == nil {
		a.Remember(p.cfg, ports)
		err = a.Start()
	}
	if err != nil {
		closer.Close()
		// Fall back to the old config rather than leave mail unrelayed.
		p.log.Error().Err(err).Msg("the reloaded config cannot start; going back to the previous one")
		if old, oerr := p.newApp(p.cfg, p.log); oerr == nil && old.Start() == nil {
			p.cur = old
		}
		return fmt.Errorf("reload: %w", err)
	}
	changed := changedSections(p.cfg, cfg)
	oldCloser := p.closer
	p.cfg, p.cur, p.log, p.closer = cfg, a, log, closer
	oldCloser.Close()
	p.log.Info().Str("config", p.path).Strs("changed", changed).Msg("config reloaded")
	return nil
}

// changedSections names the config sections whose settings differ.
func changedSections(before, after *config.Config) []string {
	b, a := reflect.ValueOf(*before), reflect.ValueOf(*after)
	var out []string
	for i := 0; i < b.NumField(); i++ {
		f := b.Type().Field(i)
		name := f.Tag.Get("toml")
		if name == "" || name == "-" || !f.IsExported() {
			continue
		}
		if !reflect.DeepEqual(b.Field(i).Interface(), a.Field(i).Interface()) {
			out = append(out, name)
		}
	}
	return out
}
