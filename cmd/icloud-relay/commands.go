package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	iofs "io/fs"
	"os"
	"os/signal"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/rs/zerolog"

	"github.com/icloud-relay/icloud-relay/app"
	"github.com/icloud-relay/icloud-relay/bench"
	"github.com/icloud-relay/icloud-relay/config"
	"github.com/icloud-relay/icloud-relay/demo"
	"github.com/icloud-relay/icloud-relay/doctor"
	"github.com/icloud-relay/icloud-relay/internal/buildinfo"
	"github.com/icloud-relay/icloud-relay/internal/redact"
	"github.com/icloud-relay/icloud-relay/logging"
	"github.com/icloud-relay/icloud-relay/relay"
	"github.com/icloud-relay/icloud-relay/relay/control"
	"github.com/icloud-relay/icloud-relay/sendmail"
	"github.com/icloud-relay/icloud-relay/service"
)

// Exit codes (DESIGN.md): 0 ok, 1 runtime failure, 2 usage or config error.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

type command struct {
	name, summary string
	run           func(args []string) int
}

func commands() []command {
	return []command{
		{"run", "relay mail in the foreground until interrupted", runCmd},
		{"doctor", "check every step from this machine to iCloud and say what to fix", doctorCmd},
		{"queue", "list, show, retry, delete or requeue queued and failed messages", queueCmd},
		{"sendmail", "sendmail-compatible submission from scripts (also when run under the name sendmail)", sendmailCmd},
		{"bench", "measure the relay against direct delivery to a stand-in upstream", benchCmd},
		{"demo", "show the relay working against a built-in stand-in for iCloud (no account, no network)", demoCmd},
		{"setup", "first-run set-up: account, app-specific password, checks, service", setupCmd},
		{"install", "install as a service (Windows service, launchd, systemd)", serviceCmd("install")},
		{"uninstall", "remove the service", serviceCmd("uninstall")},
		{"start", "start the service", serviceCmd("start")},
		{"stop", "stop the service", serviceCmd("stop")},
		{"restart", "restart the service", serviceCmd("restart")},
		{"status", "is the relay running, can mail flow, and what is queued", serviceCmd("status")},
		{"open", "open the running relay's status page in the browser", openCmd},
		{"reload", "make the running relay read its config again (as SIGHUP does, on every OS)", reloadCmd},
		{"version", "print the version", versionCmd},
	}
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "icloud-relay: accepts mail from local clients on 127.0.0.1:2525 and sends it to iCloud Mail.")
	fmt.Fprintln(w, "\nUsage: icloud-relay COMMAND [flags]   (icloud-relay COMMAND --help for its flags)")
	fmt.Fprintln(w, "\nCommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-9s %s\n", c.name, c.summary)
	}
}

func dispatch(args []string) int {
	if len(args) == 0 {
		usage(os.Stderr)
		return exitUsage
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		usage(os.Stdout)
		return exitOK
	case "--version", "-version":
		return versionCmd(nil)
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(args[1:])
		}
	}
	fmt.Fprintf(os.Stderr, "icloud-relay: unknown command %q\n\n", args[0])
	usage(os.Stderr)
	return exitUsage
}

// parseFlags parses args; it returns false with the exit code to use when
// the command should not go on (help asked for, or bad flags).
func parseFlags(fs *flag.FlagSet, args []string) (int, bool) {
	fs.SetOutput(os.Stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK, false
		}
		return exitUsage, false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "icloud-relay %s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		fs.Usage()
		return exitUsage, false
	}
	return exitOK, true
}

func configFlag(fs *flag.FlagSet) *string {
	return fs.String("config", "", "config file (default "+config.DefaultConfigPath()+")")
}

// loadConfig loads the config a command names (or the default one),
// reporting problems on stderr.
func loadConfig(path string) (*config.Config, bool) { return loadWith(config.Load, path) }

// loadLocalConfig is loadConfig for the tools that need no upstream secret
// (see config.LoadLocal).
func loadLocalConfig(path string) (*config.Config, bool) { return loadWith(config.LoadLocal, path) }

func loadWith(load func(string) (*config.Config, error), path string) (*config.Config, bool) {
	cfg, err := findAndLoad(load, path)
	if err != nil {
		fmt.Fprintf(os.Stderr, "icloud-relay: %v\n", err)
		return nil, false
	}
	return cfg, true
}

// findAndLoad loads the config at path, or at the default path when path
// is empty; the error says what is wrong in words for the user.
func findAndLoad(load func(string) (*config.Config, error), path string) (*config.Config, error) {
	if path == "" {
		path = config.DefaultConfigPath()
		if _, err := os.Stat(path); err != nil {
			return nil, fmt.Errorf("no config file: pass --config FILE or create %s (config.example.toml lists every option)", path)
		}
	}
	cfg, err := load(path)
	if err != nil {
		return nil, fmt.Errorf("config error:\n%w", err)
	}
	return cfg, nil
}

// flagsAndConfig parses args and loads the config they name; with a nil
// config it returns the exit code to end with (help, bad flags, bad config).
func flagsAndConfig(fs *flag.FlagSet, args []string, cfgPath *string) (*config.Config, int) {
	if code, ok := parseFlags(fs, args); !ok {
		return nil, code
	}
	cfg, ok := loadConfig(*cfgPath)
	if !ok {
		return nil, exitUsage
	}
	return cfg, exitOK
}

func runCmd(args []string) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	cfgPath := configFlag(fs)
	managed := fs.Bool("service", false, "run under the OS service manager (the service that install makes passes it)")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the whole run to `file`, for go tool pprof (bench --cpuprofile uses it)")
	fs.Usage = func() {
		fmt.Fprintln(os.Stderr, "Usage: icloud-relay run [--config FILE]\n\nRelays mail in the foreground until SIGINT or SIGTERM.")
		fs.PrintDefaults()
	}
	cfg, code := flagsAndConfig(fs, args, cfgPath)
	if cfg == nil {
		return code
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "icloud-relay: --cpuprofile: %v\n", err)
			return exitUsage
		}
		defer f.Close()
		defer pprof.StopCPUProfile()
	}
	red := cfg.Redactor()
	interactive := !*managed && service.Interactive()
	events := logging.NewRing(200) // the status page's last events
	logs := func(cfg *config.Config) (zerolog.Logger, io.Closer, error) {
		file := cfg.Log.File
		if file == "" && !interactive {
			// Under a service manager stderr may go nowhere (Windows): log
			// to the per-OS file too.
			file = config.DefaultPaths(!config.IsAdmin()).Log
		}
		// Each line once: with a file, standard error gets the lines only
		// when a person watches it (a terminal) or log.stderr asks for them.
		var stderr io.Writer = os.Stderr
		if file != "" && !cfg.Log.Stderr && !isatty.IsTerminal(os.Stderr.Fd()) {
			stderr = io.Discard
		}
		return logging.New(logging.Options{Level: cfg.Log.Level, Format: cfg.Log.Format, File: file,
			MaxSize: int64(cfg.Log.MaxSize), MaxFiles: cfg.Log.MaxFiles, Redactor: red, Ring: events}, stderr)
	}
	prog, err := app.NewProgram(cfg.Path, cfg, logs, red)
	if err != nil {
		fmt.Fprintf(os.Stderr, "icloud-relay: log.file: %v\n", err)
		return exitUsage
	}
	prog.Events = events
	prog.Checks = func(ctx context.Context, cfg *config.Config, begin func(string), done func(any)) bool {
		return doctor.Run(ctx, cfg, doctor.Options{Progress: pageProgress{begin, done, red}}).OK
	}
	defer prog.Close()
	if err := service.Run(prog, !interactive); err != nil {
		log := prog.Log()
		var ke *config.KeyError
		if errors.As(err, &ke) {
			log.Error().Err(err).Str(logging.KeyStage, "queue").Str(logging.KeyRemedy, "Fix the config file at the line named, or the directory it names.").Msg("relay cannot start: config error")
			fmt.Fprintf(os.Stderr, "icloud-relay: config error:\n%v\n", ke)
			return exitUsage
		}
		var le *relay.ListenError
		if errors.As(err, &le) {
			log.Error().Err(err).Str(logging.KeyStage, "listen").Str(logging.KeyRemedy, le.Remedy()).Msg("relay cannot start: cannot listen for local clients")
			return exitFailure
		}
		log.Error().Err(err).Str(logging.KeyRemedy, "The relay stopped because of this error; the lines before it say more. Fix the cause and start it again.").Msg("relay failed")
		return exitFailure
	}
	return exitOK
}

// pageProgress streams the checklist to the status page, masked as the
// terminal's is (a server's reply may echo the login).
type pageProgress struct {
	begin func(string)
	done  func(any)
	red   *redact.Redactor
}

func (p pageProgress) Begin(name string) { p.begin(name) }
func (p pageProgress) Done(s doctor.Step) {
	s.Detail, s.Remedy = p.red.String(s.Detail), p.red.String(s.Remedy)
	p.done(s)
}

func doctorCmd(args []string) int {
	fs := flag.NewFlagSet("doctor", flag.ContinueOnError)
	cfgPath := configFlag(fs)
	sendTest := fs.String("send-test", "", "also send a short test message to this `address`")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	fs.Usage = func() {
		fmt.Fprintln(os.Stderr, "Usage: icloud-relay doctor [--config FILE] [--send-test ADDR] [--json]\n\n"+
			"Runs the troubleshooting checklist: config, DNS, ports 587 and 465, TLS and\n"+
			"certificate, EHLO, login, each sender address, the local listener and the queue.\n"+
			"Exit code 0 when mail can flow, 1 otherwise, 2 for a config error.")
		fs.PrintDefaults()
	}
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	cfg, err := findAndLoad(config.Load, *cfgPath)
	if err != nil {
		if *asJSON { // JSON in every case: a script reads stdout
			doctor.ConfigFailure(err).WriteJSON(os.Stdout)
		} else {
			fmt.Fprintf(os.Stderr, "icloud-relay: %v\n", err)
		}
		return exitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	out := cfg.Redactor().Writer(os.Stdout) // a server's reply may echo the login
	opts := doctor.Options{SendTest: *sendTest}
	if !*asJSON && isatty.IsTerminal(os.Stdout.Fd()) {
		// On a terminal each step shows as it runs.
		opts.Progress = doctor.TerminalProgress(out)
	}
	if !*asJSON {
		fmt.Fprintf(out, "icloud-relay %s, checking %s\n\n", buildinfo.Get().Short(), cfg.Path)
	}
	rep := doctor.Run(ctx, cfg, opts)
	switch {
	case *asJSON:
		rep.WriteJSON(out)
	case opts.Progress != nil:
		rep.WriteSummary(out)
	default:
		rep.WriteText(out)
	}
	if !rep.OK {
		return exitFailure
	}
	return exitOK
}

func demoCmd(args []string) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintln(os.Stderr, "Usage: icloud-relay demo\n\nStarts a stand-in for iCloud and the relay on loopback, sends a message through\nand shows each stage. Needs no account and no network.")
	}
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := demo.Run(ctx, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "icloud-relay demo: %v\n", err)
		return exitFailure
	}
	return exitOK
}

func benchCmd(args []string) int {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	n := fs.Int("messages", 1000, "messages per mode and concurrency")
	rounds := fs.Int("rounds", 4, "the modes take turns in this many rounds per concurrency level")
	size := fs.Int(logging.KeySize, 4096, "message size in bytes")
	conc := fs.String("concurrency", "1,8,32", "comma-separated client concurrency levels")
	sync := fs.String("sync-window", "10s", "the relay's delivery.sync_window")
	big := fs.Bool("big", true, "also relay one 20 MiB message and report the RSS growth")
	useRSA := fs.Bool("rsa", false, "the stand-in serves an RSA 2048 certificate (default ECDSA P-256)")
	latency := fs.Duration("latency", 0, "round-trip time added to the stand-in's replies, as across a network (e.g. 10ms)")
	cpuProfile := fs.String("cpuprofile", "", "write the relay process's CPU profile to `file` (go tool pprof)")
	latencies := fs.String("latencies", "", "write every message's timing to `file` as CSV: mode, concurrency, round, start_us, latency_us, refused")
	var ext bench.External
	fs.StringVar(&ext.Host, "upstream", "", "measure against this upstream `host` instead of the in-process stand-in (a test server of yours: both modes send it real messages)")
	fs.IntVar(&ext.StartTLSPort, "starttls-port", 587, "with --upstream: its STARTTLS port")
	fs.IntVar(&ext.TLSPort, "tls-port", 465, "with --upstream: its implicit-TLS port")
	fs.StringVar(&ext.CAFile, "ca-file", "", "with --upstream: the CA certificate (PEM) of its certificate; default the system's roots")
	fs.StringVar(&ext.Username, "username", "", "with --upstream: the account to log in as (and the sender)")
	pwEnv := fs.String("password-env", "", "with --upstream: the environment `variable` holding the account's password")
	fs.StringVar(&ext.To, "to", "", "with --upstream: the recipient of the test messages (default the account itself)")
	fs.Usage = func() {
		fmt.Fprintln(os.Stderr, "Usage: icloud-relay bench [flags]\n\nRuns this binary as a relay and compares it with direct delivery (STARTTLS+AUTH per\nmessage) against an in-process stand-in upstream on loopback, or with --upstream one of yours.")
		fs.PrintDefaults()
	}
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	var upstream *bench.External
	if ext.Host != "" {
		if ext.Username == "" || *pwEnv == "" || os.Getenv(*pwEnv) == "" {
			fmt.Fprintln(os.Stderr, "icloud-relay bench: --upstream needs --username and --password-env naming a set variable (a password is never given on the command line)")
			return exitUsage
		}
		if *latency > 0 || *useRSA {
			fmt.Fprintln(os.Stderr, "icloud-relay bench: --latency and --rsa change the in-process stand-in; they do not apply to --upstream")
			return exitUsage
		}
		ext.Password = os.Getenv(*pwEnv)
		upstream = &ext
		*big = false // 20 MiB through a server of yours is not asked for
	}
	var levels []int
	for _, f := range strings.Split(*conc, ",") {
		c, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || c < 1 {
			fmt.Fprintf(os.Stderr, "icloud-relay bench: bad concurrency %q\n", f)
			return exitUsage
		}
		levels = append(levels, c)
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintf(os.Stderr, "icloud-relay bench: %v\n", err)
		return exitFailure
	}
	var timings io.Writer
	var timingsFile *os.File
	if *latencies != "" {
		f, err := os.Create(*latencies)
		if err != nil {
			fmt.Fprintf(os.Stderr, "icloud-relay bench: --latencies: %v\n", err)
			return exitFailure
		}
		defer f.Close() // (a second Close after the one below does nothing)
		timings, timingsFile = f, f
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if _, err := bench.Run(ctx, bench.Options{Binary: self, Concurrency: levels, Messages: *n, Rounds: *rounds, MessageSize: *size,
		SyncWindow: *sync, BigMessage: *big, RSA: *useRSA, Latency: *latency, Upstream: upstream, CPUProfile: *cpuProfile,
		Latencies: timings, Out: os.Stdout}); err != nil {
		fmt.Fprintf(os.Stderr, "icloud-relay bench: %v\n", err)
		return exitFailure
	}
	if timingsFile != nil {
		if err := timingsFile.Close(); err != nil {
			fmt.Fprintf(os.Stderr, "icloud-relay bench: --latencies: %v\n", err)
			return exitFailure
		}
	}
	return exitOK
}

func versionCmd(args []string) int {
	fs := flag.NewFlagSet("version", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintln(os.Stderr, "Usage: icloud-relay version\n\nPrints the version, the commit and date it was built from, and the Go version.")
	}
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	fmt.Println(buildinfo.Get())
	return exitOK
}

const sendmailUsage = `Usage: sendmail [-t] [-i|-oi] [-f FROM] [-F NAME] [--config FILE] [RCPT...]
       sendmail -bs    (SMTP on standard input and output)
       sendmail -bp    (list the queue; also when linked as mailq)
       sendmail -q     (deliver the queue now)

Reads a message on standard input and submits it to the running relay; when
the relay is not running, queues it for the relay to send when it starts.
  -bs       speak SMTP on standard input and output (Symfony, Laravel) with
            the running relay
  -t        take recipients from the To, Cc and Bcc headers (Bcc is removed)
  -i, -oi   a line with a single "." does not end the message
  -f FROM   envelope sender (default: sender.address from the config)
  -F NAME   display name for the From header added when there is none
The config is --config FILE, else $ICLOUD_RELAY_CONFIG, else the default path.
Exit codes: 0 ok, 64 usage, 65 bad message, 69 refused, 75 try again later.`

func sendmailCmd(args []string) int {
	opts, err := sendmail.ParseArgs(args)
	if err != nil {
		fmt.Fprintf(os.Stderr, "sendmail: %v\n\n%s\n", err, sendmailUsage)
		return sendmail.ExitUsage
	}
	if opts.Help {
		fmt.Println(sendmailUsage)
		return exitOK
	}
	if opts.Config == "" {
		opts.Config = os.Getenv("ICLOUD_RELAY_CONFIG")
	}
	switch opts.Mode {
	case sendmail.ModeList:
		return queueCmd(configArgs([]string{"list"}, opts.Config))
	case sendmail.ModeRun:
		return queueCmd(configArgs([]string{"retry", "--all"}, opts.Config))
	}
	cfg, ok := loadLocalConfig(opts.Config)
	if !ok {
		return sendmail.ExitTempFail // the message must not be lost: the caller keeps it
	}
	if opts.Mode == sendmail.ModeSMTP {
		if err := sendmail.Session(cfg, os.Stdin, os.Stdout); err != nil {
			fmt.Fprintf(os.Stderr, "sendmail: %v\n", err)
			var se *sendmail.Error
			if errors.As(err, &se) {
				return se.Exit
			}
			return sendmail.ExitTempFail
		}
		return exitOK
	}
	msg, err := sendmail.Prepare(opts, os.Stdin, cfg.Sender.Address)
	if err != nil {
		fmt.Fprintf(os.Stderr, "sendmail: %v\n", err)
		return sendmail.ExitDataErr
	}
	res, err := sendmail.Submit(cfg, app.IntakeConfig(cfg), msg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "sendmail: %v\n", err)
		var se *sendmail.Error
		if errors.As(err, &se) {
			return se.Exit
		}
		return sendmail.ExitTempFail
	}
	if res.QueuedOffline != "" {
		fmt.Fprintf(os.Stderr, "sendmail: the relay is not running; the message is queued as %s and will be sent when it starts\n", res.QueuedOffline)
	}
	return exitOK
}

// configArgs adds --config to a command's arguments when one is named.
func configArgs(args []string, cfg string) []string {
	if cfg != "" {
		return append(args, "--config", cfg)
	}
	return args
}

func reloadCmd(args []string) int {
	fs := flag.NewFlagSet("reload", flag.ContinueOnError)
	cfgPath := configFlag(fs)
	fs.Usage = func() {
		fmt.Fprintln(os.Stderr, "Usage: icloud-relay reload [--config FILE]\n\nMakes the relay running on the config's queue read the config again: every\nsetting applies, [log] included, and its log says which sections changed.")
		fs.PrintDefaults()
	}
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	cfg, ok := loadLocalConfig(*cfgPath) // a config with errors is reported here, as the relay would refuse it
	if !ok {
		return exitUsage
	}
	q, err := control.Open(cfg.Queue.Dir)
	if errors.Is(err, iofs.ErrNotExist) {
		err = control.ErrNotRunning // no relay has ever run on it
	} else if err == nil {
		defer q.Close()
		err = q.Reload(30 * time.Second)
	}
	if err != nil {
		if errors.Is(err, control.ErrNotRunning) {
			fmt.Fprintf(os.Stderr, "icloud-relay reload: no relay is running on %s: nothing to reload (a relay started now reads the config as it is)\n", cfg.Queue.Dir)
		} else {
			fmt.Fprintf(os.Stderr, "icloud-relay reload: %v\n", err)
		}
		return exitFailure
	}
	fmt.Println("Reloaded: the relay's log says which sections changed.")
	return exitOK
}
