package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/zalando/go-keyring"
	"golang.org/x/term"

	"github.com/icloud-relay/icloud-relay/config"
	"github.com/icloud-relay/icloud-relay/doctor"
	"github.com/icloud-relay/icloud-relay/internal/private"
	"github.com/icloud-relay/icloud-relay/service"
)

const setupUsage = `Usage: icloud-relay setup [--config FILE] [--user] [--address ADDR] [--password-stdin]
                          [--alias ADDR]... [--install] [--start] [--yes]

First-run set-up: asks for your iCloud address and an app-specific password
(typed hidden), writes the config (owner-only) with the password in a
separate owner-only file, runs the doctor checks, and offers to install and
start the service. Every question has a flag, for scripted installs:
  --address ADDR      the iCloud address (full address)
  --password-stdin    read the app-specific password from standard input
  --alias ADDR        an alias iCloud accepts as sender (repeatable)
  --install, --start  install and start the service without asking
  --yes               accept the defaults for anything not given
  --skip-checks       do not run the doctor checks (e.g. offline)
  --keyring           keep the password in the OS credential store, not a file
Advanced: --host, --starttls-port, --tls-port, --ca-file set the upstream.`

// upstreamFlags are setup's advanced flags, for a corporate TLS proxy or
// another server than iCloud's.
type upstreamFlags struct {
	host          string
	starttls, tls int
	caFile        string
}

type aliases []string

func (a *aliases) String() string     { return strings.Join(*a, ",") }
func (a *aliases) Set(v string) error { *a = append(*a, v); return nil }

func setupCmd(args []string) int {
	fs := flag.NewFlagSet("setup", flag.ContinueOnError)
	user := fs.Bool("user", !config.IsAdmin(), "per-user config and service")
	cfgPath := fs.String("config", "", "where to write the config (default: the per-OS location)")
	address := fs.String("address", "", "your iCloud address")
	pwStdin := fs.Bool("password-stdin", false, "read the app-specific password from standard input")
	var alias aliases
	fs.Var(&alias, "alias", "an alias iCloud accepts as sender (repeatable)")
	install := fs.Bool("install", false, "install the service")
	start := fs.Bool("start", false, "start the service")
	yes := fs.Bool("yes", false, "do not ask; use defaults")
	skipChecks := fs.Bool("skip-checks", false, "skip the doctor checks")
	useKeyring := fs.Bool("keyring", false, "keep the password in the OS credential store instead of a file")
	var up upstreamFlags
	fs.StringVar(&up.host, "host", "", "upstream host (default smtp.mail.me.com)")
	fs.IntVar(&up.starttls, "starttls-port", 0, "upstream STARTTLS port (default 587)")
	fs.IntVar(&up.tls, "tls-port", 0, "upstream implicit-TLS port (default 465)")
	fs.StringVar(&up.caFile, "ca-file", "", "extra CA certificate to trust (corporate TLS)")
	fs.Usage = func() { fmt.Fprintln(os.Stderr, setupUsage) }
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if *cfgPath == "" {
		*cfgPath = config.DefaultPaths(*user).Config
	}
	if *useKeyring && !*user && *install {
		fmt.Fprintln(os.Stderr, "icloud-relay setup: "+errKeyringSystemService.Error())
		return exitUsage
	}
	in := bufio.NewReader(os.Stdin)
	tty := term.IsTerminal(int(os.Stdin.Fd()))
	ask := func(question, def string) (string, error) {
		if *yes || !tty {
			return def, nil
		}
		fmt.Printf("%s [%s]: ", question, def)
		line, err := in.ReadString('\n')
		if err != nil && line == "" {
			return "", err
		}
		if line = strings.TrimSpace(line); line == "" {
			return def, nil
		}
		return line, nil
	}

	fmt.Println("icloud-relay set-up: your programs send to 127.0.0.1:2525 with no password; the relay sends to iCloud.")
	if existing, err := os.ReadFile(*cfgPath); err == nil && !strings.HasPrefix(string(existing), notSetUp) {
		if ans, _ := ask(fmt.Sprintf("%s exists. Replace it?", *cfgPath), "no"); !isYes(ans) {
			fmt.Println("Keeping the existing config. (icloud-relay doctor checks it.)")
			return exitOK
		}
	}
	addr := *address
	for addr == "" || !strings.Contains(addr, "@") {
		if !tty {
			fmt.Fprintln(os.Stderr, "icloud-relay setup: --address is required without a terminal (the full iCloud address, e.g. name@icloud.com)")
			return exitUsage
		}
		if addr != "" {
			fmt.Println("  Please give the full address, e.g. name@icloud.com.")
		}
		fmt.Print("Your iCloud email address: ")
		line, err := in.ReadString('\n')
		if err != nil && line == "" {
			return exitUsage
		}
		addr = strings.TrimSpace(line)
	}

	password, err := readPassword(*pwStdin, tty, in)
	if err != nil {
		fmt.Fprintf(os.Stderr, "icloud-relay setup: %v\n", err)
		return exitUsage
	}

	if *useKeyring {
		if err := keyring.Set(config.KeyringService, addr, password); err != nil {
			fmt.Fprintf(os.Stderr, "icloud-relay setup: cannot store the password in the OS credential store: %v\n", err)
			return exitFailure
		}
	}
	cfg, err := writeSetupConfig(*cfgPath, addr, password, alias, *user, up, *useKeyring)
	if err != nil {
		fmt.Fprintf(os.Stderr, "icloud-relay setup: %v\n", err)
		return exitFailure
	}
	where := cfg.Upstream.PasswordFile
	if *useKeyring {
		where = "the OS credential store"
	}
	who := "you only"
	if serviceAccount(*user) != "" && !*useKeyring {
		who = secretReaders
	}
	fmt.Printf("Wrote %s; the password is in %s (readable by %s).\n", cfg.Path, where, who)

	if !*skipChecks {
		fmt.Println("\nChecking the way to iCloud:")
		rep := doctor.Run(context.Background(), cfg, doctor.Options{})
		rep.WriteText(os.Stdout)
		if !rep.OK {
			fmt.Println("Fix what is marked ✗ and run icloud-relay doctor again; the config is saved.")
		}
	}

	doInstall := *install
	if *useKeyring && !*user && !doInstall {
		// Never offer a service that would fail to start.
		fmt.Println("\nThe password is in your own credential store: a system service cannot read it. Run the relay\n" +
			"yourself (below), or run setup again without --keyring to install the service.")
	} else if !doInstall && !*yes && tty {
		ans, _ := ask("\nInstall the relay as a service that starts with the computer?", "yes")
		doInstall = isYes(ans)
	}
	if doInstall {
		def, err := serviceDefinition(cfg, *user)
		if err == nil {
			err = service.Control("install", def)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "icloud-relay setup: install: %v\n", err)
			return exitFailure
		}
		printInstalled(cfg, def)
		doStart := *start
		if !doStart && !*yes && tty {
			ans, _ := ask("Start it now?", "yes")
			doStart = isYes(ans)
		}
		if doStart {
			if err := service.Control("start", def); err != nil {
				fmt.Fprintf(os.Stderr, "icloud-relay setup: start: %v\n", err)
				return exitFailure
			}
			fmt.Println("Started. Point your mail programs at 127.0.0.1, port 2525, no encryption, no password.")
			if cfg.Status.Addr != "" {
				fmt.Printf("See what it does at http://%s/ (icloud-relay open).\n", cfg.Status.Addr)
			}
		}
	} else {
		fmt.Printf("\nTo run it now in the foreground: icloud-relay run --config %s\n", cfg.Path)
		if cfg.Status.Addr != "" {
			fmt.Printf("While it runs, its status page is at http://%s/ (icloud-relay open).\n", cfg.Status.Addr)
		}
	}
	return exitOK
}

// notSetUp opens the config the .deb and .rpm install
// (packaging/linux/config.toml): setup replaces it without asking.
const notSetUp = "# icloud-relay: not set up yet."

func isYes(s string) bool {
	s = strings.ToLower(strings.TrimSpace(s))
	return s == "y" || s == "yes"
}

const appPasswordHelp = `iCloud needs an app-specific password, not your Apple Account password.
Create one at appleid.apple.com → Sign-In and Security → App-Specific
Passwords (two-factor authentication must be on). It looks like abcd-efgh-ijkl-mnop.`

func readPassword(fromStdin, tty bool, in *bufio.Reader) (string, error) {
	if fromStdin {
		line, err := in.ReadString('\n')
		if err != nil && err != io.EOF {
			return "", err
		}
		if pw := strings.TrimSpace(line); pw != "" {
			return pw, nil
		}
		return "", errors.New("no password on standard input")
	}
	if !tty {
		return "", errors.New("--password-stdin is required without a terminal")
	}
	fmt.Println("\n" + appPasswordHelp)
	for {
		fmt.Print("App-specific password (hidden): ")
		b, err := term.ReadPassword(int(os.Stdin.Fd()))
		fmt.Println()
		if err != nil {
			return "", err
		}
		if pw := strings.TrimSpace(string(b)); pw != "" {
			return pw, nil
		}
	}
}

// writeSetupConfig writes the config and a password file beside it, and
// returns the config as the relay will read it. The config holds no secret
// and is readable by every local user (as Postfix's main.cf is), so that
// sendmail works for PHP, cron and scripts whoever runs them; the password
// file is owner-only.
func writeSetupConfig(path, addr, password string, aliasList []string, user bool, up upstreamFlags, inKeyring bool) (*config.Config, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	source := "password_keyring = true"
	if !inKeyring {
		pwFile := filepath.Join(filepath.Dir(path), "password")
		if err := writePrivate(pwFile, []byte(password+"\n")); err != nil {
			return nil, err
		}
		if serviceAccount(user) != "" {
			if err := private.Share(pwFile); err != nil {
				return nil, fmt.Errorf("cannot let the service read %s: %w", pwFile, err)
			}
		}
		source = fmt.Sprintf("password_file = %q", pwFile)
	}
	paths := config.DefaultPaths(user)
	var b strings.Builder
	fmt.Fprintf(&b, "# Written by icloud-relay setup. Every option: config.example.toml.\n\n")
	fmt.Fprintf(&b, "[upstream]\nusername = %q\n%s\n", addr, source)
	if up.host != "" {
		fmt.Fprintf(&b, "host = %q\n", up.host)
	}
	if up.starttls != 0 {
		fmt.Fprintf(&b, "starttls_port = %d\n", up.starttls)
	}
	if up.tls != 0 {
		fmt.Fprintf(&b, "tls_port = %d\n", up.tls)
	}
	if up.caFile != "" {
		fmt.Fprintf(&b, "ca_file = %q\n", up.caFile)
	}
	b.WriteString("\n")
	if len(aliasList) > 0 {
		fmt.Fprintf(&b, "[sender]\naliases = [")
		for i, a := range aliasList {
			if i > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "%q", a)
		}
		b.WriteString("]\n\n")
	}
	fmt.Fprintf(&b, "[queue]\ndir = %q\n", paths.Queue)
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		return nil, err
	}
	os.Chmod(path, 0o644) // an existing file keeps its mode on WriteFile
	return config.Load(path)
}

// writePrivate writes a secret to path, made private (internal/private)
// while still empty: the secret is never readable by others, not even for
// a moment, and an existing file loses whatever access it gave.
func writePrivate(path string, secret []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if err := private.Restrict(path); err != nil {
		f.Close()
		return fmt.Errorf("cannot make %s private: %w", path, err)
	}
	if _, err := f.Write(secret); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
