package sendmail

import (
	"io"
	"reflect"
	"strings"
	"testing"
)

func TestParseArgs(t *testing.T) {
	cases := []struct {
		args []string
		want Options
		err  string
	}{
		{[]string{"-t", "-i"}, Options{FromHeaders: true, IgnoreDots: true}, ""},
		{[]string{"-oi", "-f", "me@icloud.com", "a@x.org"}, Options{IgnoreDots: true, Sender: "me@icloud.com", Rcpts: []string{"a@x.org"}}, ""},
		{[]string{"-fme@icloud.com", "-FMy Name", "a@x.org,b@x.org"}, Options{Sender: "me@icloud.com", FullName: "My Name", Rcpts: []string{"a@x.org", "b@x.org"}}, ""},
		{[]string{"-F", "Cron Daemon", "-r", "<me@icloud.com>", "--", "-odd@x.org"}, Options{Sender: "me@icloud.com", FullName: "Cron Daemon", Rcpts: []string{"-odd@x.org"}}, ""},
		{[]string{"-oem", "-odi", "-v", "-N", "never", "-Am", "a@x.org"}, Options{Rcpts: []string{"a@x.org"}}, ""},
		{[]string{"--config", "/etc/r.toml", "a@x.org"}, Options{Config: "/etc/r.toml", Rcpts: []string{"a@x.org"}}, ""},
		{[]string{"-bv"}, Options{}, "not supported"},
		{[]string{"-bs"}, Options{Mode: ModeSMTP}, ""},
		{[]string{"-bp"}, Options{Mode: ModeList}, ""},
		{[]string{"-q15m"}, Options{Mode: ModeRun}, ""},
		{[]string{"-bm", "-odb", "-oQ/var/x", "a@x.org"}, Options{Rcpts: []string{"a@x.org"}}, ""},
		{[]string{"-Z"}, Options{}, "unknown option -Z"},
		{[]string{"-f"}, Options{}, "needs a value"},
	}
	for _, c := range cases {
		got, err := ParseArgs(c.args)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%v: error %v, want %q", c.args, err, c.err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("%v: got %+v %v, want %+v", c.args, got, err, c.want)
		}
	}
}

func prepare(t *testing.T, o Options, in string) (*Message, string) {
	t.Helper()
	m, err := Prepare(o, strings.NewReader(in), "me@icloud.com")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(m.Data)
	return m, string(b)
}

func TestRecipientsFromHeadersAndBccRemoved(t *testing.T) {
	in := "From: Me <me@icloud.com>\nTo: A <a@x.org>, b@x.org\nCc: c@x.org\nBcc: hidden@x.org,\n  hidden2@x.org\nSubject: hi\n\nbody\n"
	m, data := prepare(t, Options{FromHeaders: true}, in)
	if strings.Join(m.Rcpts, ",") != "a@x.org,b@x.org,c@x.org,hidden@x.org,hidden2@x.org" {
		t.Fatalf("rcpts %v", m.Rcpts)
	}
	want := "From: Me <me@icloud.com>\r\nTo: A <a@x.org>, b@x.org\r\nCc: c@x.org\r\nSubject: hi\r\n\r\nbody\r\n"
	if data != want {
		t.Fatalf("data %q\nwant %q", data, want)
	}
	if m.From != "me@icloud.com" {
		t.Fatalf("from %q", m.From)
	}
}

func TestArgsAndHeadersCombine(t *testing.T) {
	m, _ := prepare(t, Options{FromHeaders: true, Rcpts: []string{"arg@x.org", "a@x.org"}}, "To: a@x.org\n\nx\n")
	if strings.Join(m.Rcpts, ",") != "arg@x.org,a@x.org" {
		t.Fatalf("rcpts %v", m.Rcpts)
	}
}

func TestFromHeaderAddedWithFullName(t *testing.T) {
	m, data := prepare(t, Options{Sender: "alias@icloud.com", FullName: "Backup Job", Rcpts: []string{"a@x.org"}}, "Subject: done\n\nok\n")
	if m.From != "alias@icloud.com" || !strings.HasPrefix(data, "Subject: done\r\nFrom: \"Backup Job\" <alias@icloud.com>\r\n\r\nok\r\n") {
		t.Fatalf("from %q data %q", m.From, data)
	}
}

func TestDotLines(t *testing.T) {
	in := "Subject: x\n\nline\n.\nafter the dot\n"
	_, data := prepare(t, Options{Rcpts: []string{"a@x.org"}}, in)
	if strings.Contains(data, "after the dot") {
		t.Fatalf("without -i a lone dot ends the message: %q", data)
	}
	_, data = prepare(t, Options{IgnoreDots: true, Rcpts: []string{"a@x.org"}}, in)
	if !strings.HasSuffix(data, "line\r\n.\r\nafter the dot\r\n") {
		t.Fatalf("with -i the dot line is kept: %q", data)
	}
}

func TestBareBodyAndCRLFInput(t *testing.T) {
	_, data := prepare(t, Options{Rcpts: []string{"a@x.org"}}, "just text, no headers\n")
	if data != "From: <me@icloud.com>\r\n\r\njust text, no headers\r\n" {
		t.Fatalf("bare body: %q", data)
	}
	_, data = prepare(t, Options{Rcpts: []string{"a@x.org"}}, "From: me@icloud.com\r\n\r\nalready CRLF\r\nno newline at end")
	if data != "From: me@icloud.com\r\n\r\nalready CRLF\r\nno newline at end\r\n" {
		t.Fatalf("crlf: %q", data)
	}
}

func TestNoRecipients(t *testing.T) {
	if _, err := Prepare(Options{}, strings.NewReader("Subject: x\n\ny\n"), "me@icloud.com"); err == nil || !strings.Contains(err.Error(), "no recipients") {
		t.Fatalf("got %v", err)
	}
	if _, err := Prepare(Options{FromHeaders: true}, strings.NewReader("To: not an address <<<\n\ny\n"), "me@icloud.com"); err == nil || !strings.Contains(err.Error(), "To header") {
		t.Fatalf("got %v", err)
	}
}
