package relay

import (
	"bufio"
	"io"
	"strings"
	"testing"
	"testing/iotest"
	"time"
)

var policy = SenderPolicy{Address: "me@icloud.com", Aliases: []string{"alias@icloud.com"}, Mode: RewriteHeader}

func fix(t *testing.T, in string, mode string, received bool) (string, *edits) {
	t.Helper()
	p := policy
	p.Mode = mode
	r, ed, err := fixMessage(newIntakeBuffers(), strings.NewReader(in), intake{id: "ID1", helo: "printer.lan", client: "127.0.0.1", by: "relay.local",
		received: received, policy: p, now: time.Date(2026, 11, 22, 1, 2, 3, 0, time.UTC)})
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return string(b), ed
}

const complete = "From: Me <me@icloud.com>\r\nTo: a@x.org\r\nDate: Sun, 22 Nov 2026 00:00:00 +0000\r\nMessage-ID: <a@b>\r\nSubject: hi\r\n\r\nbody\r\n"

func TestValidMessageIsUntouched(t *testing.T) {
	for _, mode := range []string{RewriteOff, RewriteEnvelope, RewriteHeader} {
		if out, _ := fix(t, complete, mode, false); out != complete {
			t.Errorf("%s: %q", mode, out)
		}
	}
}

func TestReceivedTraceHeader(t *testing.T) {
	out, _ := fix(t, complete, RewriteHeader, true)
	want := "Received: from printer.lan (127.0.0.1)\r\n\tby relay.local (icloud-relay) with ESMTP id ID1;\r\n\tSun, 22 Nov 2026 01:02:03 +0000\r\n" + complete
	if out != want {
		t.Fatalf("got %q", out)
	}
}

func TestDateAndMessageIDAddedWhenMissing(t *testing.T) {
	out, ed := fix(t, "From: me@icloud.com\r\nSubject: scan\r\n\r\nbody\r\n", RewriteOff, false)
	if !ed.addedDate || !ed.addedMessageID {
		t.Fatalf("edits %+v", ed)
	}
	if !strings.HasPrefix(out, "From: me@icloud.com\r\nSubject: scan\r\nDate: Sun, 22 Nov 2026 01:02:03 +0000\r\nMessage-ID: <20261122010203.") ||
		!strings.Contains(out, "@icloud.com>\r\n\r\nbody\r\n") {
		t.Fatalf("got %q", out)
	}
}

func TestHeaderRewriting(t *testing.T) {
	cases := []struct {
		name, from, extra, wantFrom, wantReplyTo string
	}{
		{"plain address", "From: scanner@printer.lan\r\n", "", "From: <me@icloud.com>\r\n", "Reply-To: scanner@printer.lan\r\n"},
		{"display name", "From: \"Office Scanner\" <scanner@printer.lan>\r\n", "", "From: \"Office Scanner\" <me@icloud.com>\r\n", "Reply-To: \"Office Scanner\" <scanner@printer.lan>\r\n"},
		{"encoded word", "From: =?UTF-8?Q?J=C3=BCrgen_M=C3=BCller?= <jm@example.de>\r\n", "", "From: =?utf-8?q?J=C3=BCrgen_M=C3=BCller?= <me@icloud.com>\r\n", "Reply-To: =?UTF-8?Q?J=C3=BCrgen_M=C3=BCller?= <jm@example.de>\r\n"},
		{"existing Reply-To kept", "From: Bot <bot@x.org>\r\n", "Reply-To: help@x.org\r\n", "From: \"Bot\" <me@icloud.com>\r\n", ""},
		{"folded From", "From: \"Long Name\"\r\n <long@x.org>\r\n", "", "From: \"Long Name\" <me@icloud.com>\r\n", "Reply-To: \"Long Name\"\r\n <long@x.org>\r\n"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			in := c.from + c.extra + "Subject: s\r\nDate: d\r\nMessage-ID: <m@x>\r\n\r\nbody\r\n"
			out, ed := fix(t, in, RewriteHeader, false)
			want := c.wantFrom + c.wantReplyTo + c.extra + "Subject: s\r\nDate: d\r\nMessage-ID: <m@x>\r\n\r\nbody\r\n"
			if out != want {
				t.Fatalf("got  %q\nwant %q", out, want)
			}
			if ed.fromRewritten == "" {
				t.Fatal("rewrite not reported")
			}
			// envelope mode leaves the header alone
			if out, _ := fix(t, in, RewriteEnvelope, false); out != in {
				t.Fatalf("envelope mode changed the header: %q", out)
			}
		})
	}
}

func TestAliasAndSignedMessagesAreNotRewritten(t *testing.T) {
	in := "From: Me <ALIAS@icloud.com>\r\nDate: d\r\nMessage-ID: <m@x>\r\n\r\nb\r\n"
	if out, _ := fix(t, in, RewriteHeader, false); out != in {
		t.Fatalf("alias rewritten: %q", out)
	}
	signed := "DKIM-Signature: v=1; a=rsa-sha256; d=x.org\r\nFrom: other@x.org\r\nDate: d\r\nMessage-ID: <m@x>\r\n\r\nb\r\n"
	out, ed := fix(t, signed, RewriteHeader, false)
	if out != signed || !ed.signedKept {
		t.Fatalf("signed message changed: %q %+v", out, ed)
	}
}

func TestBareLFBecomesCRLFAndDotsAreUnstuffed(t *testing.T) {
	in := "Subject: lf\nDate: d\nMessage-ID: <m@x>\n\nline one\n..stuffed after a bare LF\nmixed\r\nend"
	out, _ := fix(t, in, RewriteOff, false)
	want := "Subject: lf\r\nDate: d\r\nMessage-ID: <m@x>\r\n\r\nline one\r\n.stuffed after a bare LF\r\nmixed\r\nend"
	if out != want {
		t.Fatalf("got  %q\nwant %q", out, want)
	}
}

func TestNoHeaderBlockIsLeftAlone(t *testing.T) {
	in := "just some text without headers\r\nmore\r\n"
	if out, _ := fix(t, in, RewriteHeader, false); out != in {
		t.Fatalf("got %q", out)
	}
	long := strings.Repeat("X-Long: "+strings.Repeat("a", 990)+"\r\n", 300) + "\r\nbody\r\n"
	if out, _ := fix(t, long, RewriteHeader, false); out != long {
		t.Fatal("an over-long header block must pass through untouched")
	}
}

func TestEnvelopePolicy(t *testing.T) {
	for _, c := range []struct {
		mode, from, want string
		refused          bool
	}{
		{RewriteOff, "me@icloud.com", "me@icloud.com", false},
		{RewriteOff, "Alias@iCloud.com", "Alias@iCloud.com", false},
		{RewriteOff, "scanner@printer.lan", "", true},
		{RewriteOff, "", "", true},
		{RewriteEnvelope, "scanner@printer.lan", "me@icloud.com", false},
		{RewriteHeader, "", "me@icloud.com", false},
	} {
		p := policy
		p.Mode = c.mode
		got, refusal := p.envelopeSender(c.from)
		if got != c.want || (refusal != nil) != c.refused {
			t.Errorf("%s %q: %q %v", c.mode, c.from, got, refusal)
		}
		if refusal != nil && (refusal.Code != 553 || !strings.Contains(refusal.Message, "sender.rewrite")) {
			t.Errorf("refusal lacks the remedy: %v", refusal)
		}
	}
}

// crlfReference is the obvious byte-at-a-time definition of crlfReader.
func crlfReference(in string) string {
	var b strings.Builder
	bol := false
	for i := 0; i < len(in); i++ {
		c := in[i]
		if bol && c == '.' && i+1 < len(in) && in[i+1] == '.' {
			i++
		}
		bol = false
		if c == '\n' && (i == 0 || in[i-1] != '\r') {
			b.WriteString("\r\n")
			bol = true
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

func TestCRLFReaderMatchesReferenceAcrossChunks(t *testing.T) {
	alphabet := "\n\r.a"
	seed := uint32(1)
	for n := 0; n < 3000; n++ {
		var in strings.Builder
		for i := 0; i < n%97; i++ {
			seed = seed*1664525 + 1013904223
			in.WriteByte(alphabet[seed>>30])
		}
		// A tiny bufio buffer and one-byte reads force every chunk boundary.
		r := &crlfReader{r: bufio.NewReaderSize(iotest.OneByteReader(strings.NewReader(in.String())), 16)}
		got, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		if want := crlfReference(in.String()); string(got) != want {
			t.Fatalf("input %q:\n got %q\nwant %q", in.String(), got, want)
		}
	}
}
