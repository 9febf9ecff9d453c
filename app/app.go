// Package app assembles the relay from a validated config: queue, upstream
// client, scheduler and listener. It is the program object with Start and
// Stop that both the command line and the service manager drive.
package app

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"runtime/debug"

	"github.com/rs/zerolog"

	"github.com/icloud-relay/icloud-relay/config"
	"github.com/icloud-relay/icloud-relay/internal/buildinfo"
	"github.com/icloud-relay/icloud-relay/internal/certs"
	"github.com/icloud-relay/icloud-relay/internal/redact"
	"github.com/icloud-relay/icloud-relay/logging"
	"github.com/icloud-relay/icloud-relay/relay"
	"github.com/icloud-relay/icloud-relay/relay/control"
	"github.com/icloud-relay/icloud-relay/relay/queue"
	"github.com/icloud-relay/icloud-relay/status"
	"github.com/icloud-relay/icloud-relay/upstream"
)

// App is a configured relay.
type App struct {
	cfg    *config.Config
	log    zerolog.Logger
	red    *redact.Redactor
	q      *queue.Queue
	up     *upstream.Client
	sched  *relay.Scheduler
	srv    *relay.Server
	ctl    *control.Server
	page   *status.Server // nil: no status page
	events *logging.Ring  // the last log lines, for the page (nil: none)
	checks Checks         // the page's "Run checks" (nil: none)
	unlock func()
	cancel context.CancelFunc
	// reload, when set before Start, is what the control API's reload
	// does (the program's Reload).
	reload func()
}

// New checks what can be checked before starting (queue directory, CA file,
// local TLS certificate) and builds the parts. red masks secrets in what
// the relay writes beyond the log (queue records, the control API); it is
// the log's own, holding cfg's secrets.
func New(cfg *config.Config, log zerolog.Logger, red *redact.Redactor) (*App, error) {
	a := &App{cfg: cfg, log: log, red: red}
	q, err := queue.Open(cfg.Queue.Dir)
	if err != nil {
		return nil, cfg.KeyError("queue.dir", "cannot use %s: %v; the relay must be able to create and write it (check its owner and permissions)", cfg.Queue.Dir, errors.Unwrap(err))
	}
	for _, d := range q.Tightened() {
		log.Warn().Str(logging.KeyStage, "queue").Str("dir", d).
			Str("remedy", "Nothing to do: the relay made it readable by its owner only, as queued mail is private.").
			Msg("queue directory was readable by other users; permissions tightened to 0700")
	}
	a.q = q
	a.up = Upstream(cfg, func(e upstream.Event) {
		if e.Switched {
			logging.PortSwitched(log, e.Err, e.Port)
			return
		}
		log.Debug().Str(logging.KeyStage, string(e.Stage)).Int(logging.KeyPort, e.Port).Msg(e.Detail)
	})
	d := cfg.Delivery
	pol := relay.Policy{
		Workers: d.Workers, SyncWindow: d.SyncWindow.D(), RetryMin: d.RetryMin.D(), RetryMax: d.RetryMax.D(),
		MaxAge: d.MaxAge.D(), ProbeInterval: d.ProbeInterval.D(), AuthPause: d.AuthPause.D(),
		DailyLimit: d.DailyLimit,
	}
	if d.NotifyFailures {
		pol.NoticeTo = cfg.Sender.Address
	}
	pol.Redactor = red
	in := relay.NewIntake(q, IntakeConfig(cfg), log)
	pol.Intake = in
	a.sched = relay.NewScheduler(q, a.up, pol, log)

	l := cfg.Listen
	lc := relay.ListenConfig{
		Addrs: listenAddrs(l.Addr), Allow: l.AllowNets, Users: map[string]string{},
		Hostname: l.Hostname, MaxRecipients: l.MaxRecipients,
		Timeout: l.Timeout.D(), MaxConnections: l.MaxConnections, MaxConnectionsPerClient: l.MaxConnectionsPerClient, SyncWindow: d.SyncWindow.D(), BulkGap: d.BulkGap.D(), UpstreamLimit: a.up.MaxSize,
	}
	if l.TLSAddr != "" {
		lc.TLSAddrs = []string{l.TLSAddr}
	}
	for _, usr := range l.Users {
		lc.Users[usr.Username] = usr.Password.Reveal()
	}
	if l.StartTLS || l.TLSAddr != "" {
		cert, err := localCert(cfg)
		if err != nil {
			return nil, err
		}
		lc.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	a.srv = relay.NewServer(lc, in, a.sched, log)
	return a, nil
}

// IntakeConfig is the intake's rules as cfg sets them: the same for every
// door into the queue (the listener, sendmail, failure notices).
func IntakeConfig(cfg *config.Config) relay.IntakeConfig {
	return relay.IntakeConfig{
		Hostname: cfg.Listen.Hostname, MaxMessageSize: int64(cfg.Listen.MaxMessageSize), ReceivedHeader: cfg.Listen.ReceivedHeader,
		Sender: relay.SenderPolicy{Address: cfg.Sender.Address, Aliases: cfg.Sender.Aliases, Mode: cfg.Sender.Rewrite},
	}
}

// Upstream returns the upstream client cfg describes; trace may be nil.
func Upstream(cfg *config.Config, trace func(upstream.Event)) *upstream.Client {
	u := cfg.Upstream
	return upstream.New(upstream.Config{
		Host: u.Host, StartTLSPort: u.StartTLSPort, TLSPort: u.TLSPort,
		Username: u.Username, Password: u.Password.Reveal(), CAFile: u.CAFile,
		HeloName: u.HeloName, ConnectTimeout: u.ConnectTimeout.D(), Timeout: u.Timeout.D(),
		ReprobeInterval: u.ReprobeInterval.D(), Trace: trace,
		MaxIdle: cfg.Delivery.Workers, IdleTimeout: u.IdleTimeout.D(), MaxMessagesPerConnection: u.MaxMessagesPerConnection,
		AttemptTimeout: u.AttemptTimeout.D(),
	})
}

// listenAddrs adds the IPv6 loopback twin of an IPv4 loopback address, so
// clients that resolve "localhost" to ::1 find the relay too.
func listenAddrs(addr string) []string {
	host, port, err := net.SplitHostPort(addr)
	if err == nil && host == "127.0.0.1" && port != "0" {
		return []string{addr, net.JoinHostPort("::1", port)}
	}
	return []string{addr}
}

func localCert(cfg *config.Config) (tls.Certificate, error) {
	l := cfg.Listen
	if l.TLSCert != "" {
		c, err := tls.LoadX509KeyPair(l.TLSCert, l.TLSKey)
		if err != nil {
			return c, fmt.Errorf("listen.tls_cert/tls_key: %w", err)
		}
		return c, nil
	}
	return certs.LoadOrCreateSelfSigned(filepath.Join(cfg.Queue.Dir, "tls"), l.Hostname, "localhost", "127.0.0.1", "::1")
}

// Start recovers the queue, starts delivery and opens the listener.
func (a *App) Start() error {
	for _, w := range a.cfg.ExposedSecrets() {
		a.log.Warn().Str(logging.KeyRemedy, "Make the file readable by its owner only.").Msg(w)
	}
	unlock, err := a.q.Lock()
	if errors.Is(err, queue.ErrLocked) {
		return fmt.Errorf("another icloud-relay already uses the queue in %s (stop it first, or give this one its own queue.dir)", a.cfg.Queue.Dir)
	}
	if err != nil {
		return a.cfg.KeyError("queue.dir", "cannot use %s: %v; the relay must be able to create and write it (check its owner and permissions)", a.cfg.Queue.Dir, errors.Unwrap(err))
	}
	started := false
	defer func() {
		if !started {
			unlock()
		}
	}()
	rep, err := a.q.Recover()
	if err != nil {
		return err
	}
	if rep.TempRemoved+rep.OrphansRemoved+rep.FailsFinished > 0 || len(rep.Quarantined) > 0 {
		a.log.Info().Str(logging.KeyStage, "queue").Int("temp_removed", rep.TempRemoved).Int("orphans_removed", rep.OrphansRemoved).
			Int("fails_finished", rep.FailsFinished).Int("quarantined", len(rep.Quarantined)).Msg("queue recovered after an unclean stop")
	}
	for _, qe := range rep.Quarantined {
		a.log.Error().Str(logging.KeyStage, "queue").Str(logging.KeyQueueID, qe.ID).Str(logging.KeyError, qe.Reason).
			Str("remedy", "The entry was moved to the failed area; the sender should send it again.").
			Msg("damaged queue entry quarantined")
	}
	if err := a.srv.Listen(); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	if err := a.sched.Start(ctx); err != nil {
		cancel()
		a.srv.Close()
		return err
	}
	if a.ctl, err = control.Serve(a.cfg.Queue.Dir, controlOps{a.sched, a}, a.log, a.red, a.reload); err != nil {
		cancel()
		a.srv.Close()
		return err
	}
	a.srv.Serve()
	a.startPage()
	started, a.unlock = true, unlock
	// Start-up (certificates, config, recovery) leaves garbage behind; an
	// always-on service should not keep it resident.
	debug.FreeOSMemory()
	a.log.Info().Str(logging.KeyVersion, buildinfo.Get().Short()).Str("upstream", a.cfg.Upstream.Host).Int("starttls_port", a.cfg.Upstream.StartTLSPort).
		Int("tls_port", a.cfg.Upstream.TLSPort).Str("username", a.cfg.Upstream.Username).
		Str("queue_dir", a.cfg.Queue.Dir).Msg("relay started")
	return nil
}

// PortMemory is what the upstream client learned about the ports.
func (a *App) PortMemory() upstream.PortMemory { return a.up.PortMemory() }

// Remember takes over what the relay before a reload learned about the
// ports (the same upstream host and ports only).
func (a *App) Remember(before *config.Config, m upstream.PortMemory) {
	b, u := before.Upstream, a.cfg.Upstream
	if b.Host == u.Host && b.StartTLSPort == u.StartTLSPort && b.TLSPort == u.TLSPort {
		a.up.Remember(m)
	}
}

// Addr is the listener's first address.
func (a *App) Addr() net.Addr { return a.srv.Addr() }

// Stop stops accepting, lets client sessions finish until ctx ends, then
// stops delivery. Queued messages stay queued.
func (a *App) Stop(ctx context.Context) error {
	a.log.Info().Msg("stopping: no new connections; sessions in progress may finish")
	err := a.srv.Shutdown(ctx)
	if a.page != nil {
		a.page.Close()
	}
	a.ctl.Close()
	a.cancel()
	a.sched.Wait()
	a.up.CloseIdle()
	a.unlock()
	a.log.Info().Int(logging.KeyQueued, a.sched.Len()).Msg("relay stopped")
	return err
}
