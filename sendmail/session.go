package sendmail

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"strings"
	"time"

	"github.com/icloud-relay/icloud-relay/config"
)

// Session is "sendmail -bs": SMTP on standard input and output, as
// Symfony Mailer's and Laravel's sendmail transport speak it. It joins the
// caller to the running relay's listener, so the message goes through the
// same intake as any other, and the replies are the relay's own. When the
// relay requires a login ([[listen.users]]) the session logs in for the
// caller first (the caller's own EHLO keeps the login). With no relay
// running the caller gets 421 and the exit code 75: its message is not
// lost, it keeps it.
func Session(cfg *config.Config, in io.Reader, out io.Writer) error {
	conn, err := net.DialTimeout("tcp", listenAddr(cfg), 5*time.Second)
	if err != nil {
		fmt.Fprintf(out, "421 4.3.0 The relay is not running; try again later\r\n")
		return &Error{Exit: ExitTempFail, Err: fmt.Errorf("the relay is not running (nothing listens on %s): start it, or submit without -bs to queue offline", listenAddr(cfg))}
	}
	defer conn.Close()
	tp := textproto.NewConn(conn)
	greeting, err := readReply(&tp.Reader, 220)
	if err != nil {
		fmt.Fprintf(out, "421 4.3.0 The relay did not greet; try again later\r\n")
		return &Error{Exit: ExitTempFail, Err: fmt.Errorf("the relay at %s: %w", listenAddr(cfg), err)}
	}
	if len(cfg.Listen.Users) > 0 {
		if err := login(tp, cfg.Listen.Users[0]); err != nil {
			fmt.Fprintf(out, "421 4.7.0 The relay refused this machine's login; try again later\r\n")
			return &Error{Exit: ExitTempFail, Err: fmt.Errorf("logging in to the relay: %w", err)}
		}
	}
	io.WriteString(out, greeting)
	// Both ways until the relay hangs up (after QUIT) or the caller does.
	done := make(chan struct{})
	go func() {
		io.Copy(conn, in)
		if cw, ok := conn.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
		close(done)
	}()
	_, err = io.Copy(out, tp.R) // what textproto has buffered, then the rest
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return &Error{Exit: ExitTempFail, Err: err}
	}
	return nil
}

// readReply reads a whole reply and returns it as it came (CRLF lines).
func readReply(r *textproto.Reader, want int) (string, error) {
	var b strings.Builder
	for {
		line, err := r.ReadLine()
		if err != nil {
			return "", err
		}
		b.WriteString(line + "\r\n")
		if len(line) < 4 || line[3] != '-' {
			if !strings.HasPrefix(line, fmt.Sprint(want)) {
				return "", fmt.Errorf("unexpected reply %q", line)
			}
			return b.String(), nil
		}
	}
}

// login does EHLO and AUTH PLAIN as the config's first local user.
func login(tp *textproto.Conn, u config.User) error {
	if err := tp.PrintfLine("EHLO localhost"); err != nil {
		return err
	}
	if _, err := readReply(&tp.Reader, 250); err != nil {
		return err
	}
	creds := "\x00" + u.Username + "\x00" + u.Password.Reveal()
	if err := tp.PrintfLine("AUTH PLAIN %s", base64Encode(creds)); err != nil {
		return err
	}
	_, err := readReply(&tp.Reader, 235)
	return err
}

// listenAddr is where the relay listens, as a client connects to it.
func listenAddr(cfg *config.Config) string {
	addr := cfg.Listen.Addr
	if host, port, err := net.SplitHostPort(addr); err == nil {
		if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
			addr = net.JoinHostPort("127.0.0.1", port)
		}
	}
	return addr
}

func base64Encode(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
