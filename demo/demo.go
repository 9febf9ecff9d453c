// Package demo runs the whole relay against the built-in stand-in for
// iCloud, on loopback, with no account and no network: what
// `icloud-relay demo` shows a newcomer.
package demo

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/icloud-relay/icloud-relay/app"
	"github.com/icloud-relay/icloud-relay/config"
	"github.com/icloud-relay/icloud-relay/logging"
	"github.com/icloud-relay/icloud-relay/upstream/upstreamtest"
)

// Run starts the stand-in and the relay, sends one message through with a
// real SMTP client, and shows every stage on out.
func Run(ctx context.Context, out io.Writer) error {
	dir, err := os.MkdirTemp("", "icloud-relay-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	step := func(n int, format string, args ...any) {
		fmt.Fprintf(out, "\n── %d. %s\n", n, fmt.Sprintf(format, args...))
	}

	step(1, "Starting a stand-in for smtp.mail.me.com on loopback (TLS with its own test CA, login required)")
	standin, err := upstreamtest.Start(upstreamtest.Options{})
	if err != nil {
		return fmt.Errorf("start stand-in: %w", err)
	}
	defer standin.Close()
	caFile, err := standin.WriteCA(dir)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "   STARTTLS port %d (plays 587), implicit TLS port %d (plays 465), account %s\n",
		standin.StartTLSPort, standin.TLSPort, standin.Username())

	step(2, "Writing a config for the relay")
	cfgText := fmt.Sprintf(`[listen]
addr = "127.0.0.1:0"

[upstream]
host = %q
starttls_port = %d
tls_port = %d
username = %q
password_env = "ICLOUD_RELAY_DEMO_PASSWORD"
ca_file = %q
helo_name = "demo-host.example"

[queue]
dir = %q

[log]
level = "debug"
format = "console"

[status]
addr = ""
`, standin.Host, standin.StartTLSPort, standin.TLSPort, standin.Username(), caFile, filepath.Join(dir, "queue"))
	cfgPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(cfgText), 0o600); err != nil {
		return err
	}
	os.Setenv("ICLOUD_RELAY_DEMO_PASSWORD", standin.Password())
	for _, line := range strings.Split(strings.TrimSpace(cfgText), "\n") {
		fmt.Fprintf(out, "   %s\n", line)
	}
	cfg, err := config.Load(cfgPath)
	if err != nil {
		return err
	}

	step(3, "Starting the relay")
	log, closer, err := logging.New(logging.Options{Level: cfg.Log.Level, Format: cfg.Log.Format, Redactor: cfg.Redactor()}, out)
	if err != nil {
		return err
	}
	defer closer.Close()
	relay, err := app.New(cfg, log, cfg.Redactor())
	if err != nil {
		return err
	}
	if err := relay.Start(); err != nil {
		return err
	}
	defer func() {
		stopCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		relay.Stop(stopCtx)
	}()

	step(4, "A local client sends a message to %s: plain SMTP, no TLS, no password", relay.Addr())
	from, to := standin.Username(), "friend@example.com"
	msg := "From: Demo <" + from + ">\r\nTo: <" + to + ">\r\nSubject: Hello through icloud-relay\r\n" +
		"Date: " + time.Now().Format(time.RFC1123Z) + "\r\nMessage-ID: <demo." + fmt.Sprint(time.Now().UnixNano()) + "@icloud.com>\r\n" +
		"\r\nIt works: taken into the queue, then sent over verified TLS with a login.\r\n"
	reply, err := send(ctx, relay.Addr().String(), from, to, msg)
	if err != nil {
		return fmt.Errorf("client: %w", err)
	}
	fmt.Fprintf(out, "   the relay answered the client: %s\n", reply)

	step(5, "What the stand-in iCloud received")
	got := standin.WaitMessages(1, 30*time.Second)
	if len(got) == 0 {
		return fmt.Errorf("the stand-in received nothing within 30s; see the log above for the failing stage")
	}
	m := got[0]
	fmt.Fprintf(out, "   on port %d, MAIL FROM:<%s> RCPT TO:%v, %d bytes;\n   identical to what the client sent, apart from one added Received trace header: %v\n",
		m.Port, m.From, m.To, len(m.Data), upstreamtest.StripTrace(m.Data) == msg)
	fmt.Fprintf(out, "\n%s", indent(string(m.Data)))
	fmt.Fprintln(out, "\nDone. To relay real mail, write a config like config.example.toml and run: icloud-relay run --config FILE")
	return nil
}

func indent(s string) string {
	return "   │ " + strings.ReplaceAll(strings.TrimRight(s, "\r\n"), "\r\n", "\n   │ ") + "\n"
}

// send submits one message the way a simple local client does.
func send(ctx context.Context, addr, from, to, msg string) (string, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	c := smtp.NewClient(conn)
	defer c.Close()
	if err := c.Hello("demo-client.local"); err != nil {
		return "", err
	}
	if err := c.Mail(from, nil); err != nil {
		return "", err
	}
	if err := c.Rcpt(to, nil); err != nil {
		return "", err
	}
	w, err := c.Data()
	if err != nil {
		return "", err
	}
	if _, err := io.WriteString(w, msg); err != nil {
		return "", err
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return "", err
	}
	c.Quit()
	return "250 " + resp.StatusText, nil
}
