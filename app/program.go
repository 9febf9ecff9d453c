package app

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/icloud-relay/icloud-relay/config"
	"github.com/icloud-relay/icloud-relay/internal/redact"
)

// Program is the relay as the service manager and the command line drive
// it: Start and Stop, and Reload to take up an edited config file without
// losing queued mail (the queue stays on disk; the new relay picks it up).
type Program struct {
	path string
	log  zerolog.Logger
	red  *redact.Redactor // the log's: a reloaded config's secrets are added to it

	mu  sync.Mutex
	cfg *config.Config
	cur *App
}

// NewProgram returns a program for the config at path, already loaded as
// cfg, logging to log, whose output red masks.
func NewProgram(path string, cfg *config.Config, log zerolog.Logger, red *redact.Redactor) *Program {
	return &Program{path: path, cfg: cfg, log: log, red: red}
}

// Start starts the relay. It does not block.
func (p *Program) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	a, err := New(p.cfg, p.log, p.red)
	if err != nil {
		return err
	}
	if err := a.Start(); err != nil {
		return err
	}
	p.cur = a
	return nil
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

// Reload reads the config file again. A config with errors is reported and
// the running relay keeps going; a good one replaces it (a short gap in
// listening, nothing lost: a client that connects in that gap retries).
// A paused delivery resumes, since the config may fix what paused it.
func (p *Program) Reload() error {
	cfg, err := config.Load(p.path)
	if err != nil {
		p.log.Error().Err(err).Msg("config reload refused: the file has errors; the relay keeps running with the old config")
		return err
	}
	cfg.AddSecrets(p.red) // before anything of the new config can be logged
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cur != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		p.cur.Stop(ctx)
		cancel()
		p.cur = nil
	}
	a, err := New(cfg, p.log, p.red)
	if err == nil {
		err = a.Start()
	}
	if err != nil {
		// Fall back to the old config rather than leave mail unrelayed.
		p.log.Error().Err(err).Msg("the reloaded config cannot start; going back to the previous one")
		if old, oerr := New(p.cfg, p.log, p.red); oerr == nil && old.Start() == nil {
			p.cur = old
		}
		return fmt.Errorf("reload: %w", err)
	}
	p.cfg, p.cur = cfg, a
	p.log.Info().Str("config", p.path).Msg("config reloaded")
	return nil
}
