package upstream_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/icloud-relay/icloud-relay/upstream"
)

// One upstream transaction (MAIL, RCPT, DATA of a 4 KiB message) over a
// logged-in, reused connection to the stand-in on loopback: the relay's
// cost per message once the login is paid. allocs/op shows a regression.
//
//	go test -run '^$' -bench Transaction -benchmem ./upstream/
func BenchmarkTransaction(b *testing.B) {
	s := standin(b)
	c := client(b, s, func(cfg *upstream.Config) {
		cfg.IdleTimeout, cfg.MaxIdle, cfg.MaxMessagesPerConnection = time.Minute, 1, 0
	})
	data := "From: <demo@icloud.com>\r\nTo: <friend@example.com>\r\nSubject: bench\r\n\r\n" + strings.Repeat("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\r\n", 64)
	send := func() {
		m := &upstream.Message{From: s.Username(), To: []string{"friend@example.com"}, Size: int64(len(data)), Body: strings.NewReader(data)}
		if _, err := c.Send(context.Background(), m); err != nil {
			b.Fatal(err)
		}
	}
	send() // the login
	b.ReportAllocs()
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		send()
	}
	b.StopTimer()
	if n := c.Logins(); n != 1 {
		b.Fatalf("%d logins, want 1: the connection was not reused", n)
	}
}
