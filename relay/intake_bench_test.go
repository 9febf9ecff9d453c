package relay

import (
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/icloud-relay/icloud-relay/relay/queue"
)

// The intake of one 4 KiB message: staging it (header fix-ups; the data
// held in memory) and, as the relay does when it answers after the local
// commit, committing it (the data file written, fsyncs). allocs/op shows a regression on the hot path.
//
//	go test -run '^$' -bench Intake -benchmem ./relay/
func BenchmarkIntake(b *testing.B) {
	q, err := queue.Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	in := NewIntake(q, IntakeConfig{Hostname: "localhost", MaxMessageSize: 20 << 20, ReceivedHeader: true,
		Sender: SenderPolicy{Address: "demo@icloud.com", Mode: "header"}}, zerolog.Nop())
	data := "From: Demo <demo@icloud.com>\r\nTo: <friend@example.com>\r\nSubject: bench\r\n" +
		"Message-ID: <bench@example.com>\r\nDate: Tue, 1 Dec 2026 10:00:00 +0000\r\n\r\n" + strings.Repeat("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\r\n", 64)
	env := Envelope{From: "demo@icloud.com", Rcpts: []string{"friend@example.com"}, Helo: "client.example", Client: "127.0.0.1"}
	for _, commit := range []bool{false, true} {
		name := "stage"
		if commit {
			name = "stage+commit"
		}
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(data)))
			for i := 0; i < b.N; i++ {
				m, st, err := in.Stage(env, strings.NewReader(data))
				if err != nil {
					b.Fatal(err)
				}
				if commit {
					if err := q.Commit(st, m); err != nil {
						b.Fatal(err)
					}
					q.Delete(m.ID)
				} else {
					q.Discard(st)
				}
			}
		})
	}
}
