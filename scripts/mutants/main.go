// Command mutants checks that the tests catch broken promises: it plants
// one bug at a time (a mutant: one small change to the code a promise
// rests on), runs the tests that guard that code, and reports which bugs
// they caught ("killed") and which they let through ("survived").
//
//	go run ./scripts/mutants            # every mutant
//	go run ./scripts/mutants -run queue # those whose name matches "queue"
//
// Each mutant is planted with `go test -overlay`, so the working tree is
// never changed, even when the run is interrupted. The mutants are written
// down below, each with the promise it breaks; add one with every promise
// worth guarding. A survivor is either a gap in the tests or an equivalent
// mutant (one that changes nothing observable): say which in its note.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

type mutant struct {
	name     string
	file     string // relative to the module root
	from, to string // exactly one occurrence of from is replaced
	pkgs     []string
	run      string // -run pattern; "" runs every test of pkgs
	note     string // why a survivor is accepted (equivalent), if it is
}

var mutants = []mutant{
	// Durability: the commit protocol and its order (relay/queue).
	{name: "queue: no data fsync", file: "relay/queue/staged.go", from: "\t\terr := f.Sync()\n", to: "\t\tvar err error\n", pkgs: []string{"./relay/queue"}},
	{name: "queue: no directory fsync", file: "relay/queue/queue.go", from: "\treturn q.fs.SyncDir(filepath.Dir(path))\n", to: "\treturn nil\n", pkgs: []string{"./relay/queue"}},
	{name: "queue: metadata before the data sync", file: "relay/queue/queue.go", from: "\tif werr == nil && ready != nil {\n\t\twerr = ready()\n\t}\n", to: "", pkgs: []string{"./relay/queue"}},
	{name: "queue: a failed data fsync ignored", file: "relay/queue/staged.go", from: "\t\tif err := <-synced; err != nil {\n", to: "\t\tif err := <-synced; err != nil && false {\n", pkgs: []string{"./relay/queue"}},
	{name: "queue: staged data in memory not written at the commit", file: "relay/queue/staged.go", from: "\t\tif _, err := f.Write(st.mem); err != nil {", to: "\t\tif _, err := f.Write(nil); err != nil {", pkgs: []string{"./relay/queue"}, run: "CommitOrder"},
	{name: "queue: staged data in memory unbounded", file: "relay/queue/staged.go", from: "\tif b.used.Add(int64(n)) <= memBudget {", to: "\tif b.used.Add(int64(n)) <= 1<<62 {", pkgs: []string{"./relay/queue"}, run: "Bounded"},
	{name: "queue: a commit keeps its memory", file: "relay/queue/staged.go", from: "\tst.err = q.commit(st, m)\n\tq.mem.release(st.held)\n", to: "\tst.err = q.commit(st, m)\n", pkgs: []string{"./relay/queue"}, run: "Bounded"},
	{name: "queue: temp metadata not synced", file: "relay/queue/queue.go", from: "\tif werr == nil {\n\t\twerr = f.Sync()\n\t}", to: "", pkgs: []string{"./relay/queue"}},
	{name: "queue: data removed before metadata", file: "relay/queue/queue.go", from: "func (q *Queue) Delete(id string) error {\n", to: "func (q *Queue) Delete(id string) error {\n\tq.fs.Remove(q.dataPath(q.active, id))\n", pkgs: []string{"./relay/queue"}},
	{name: "queue: failed move leaves the active metadata", file: "relay/queue/queue.go", from: "\tif err := q.fs.Remove(q.metaPath(q.active, m.ID)); err != nil && !errors.Is(err, fs.ErrNotExist) {\n\t\treturn &Error{Op: \"fail\"", to: "\tif err := error(nil); err != nil {\n\t\treturn &Error{Op: \"fail\"", pkgs: []string{"./relay/queue"}},
	{name: "queue: failed move without the active directory sync", file: "relay/queue/queue.go", from: "\tq.fs.SyncDir(q.active)\n\treturn nil\n}\n\n// Active", to: "\treturn nil\n}\n\n// Active", pkgs: []string{"./relay/queue"}},
	{name: "queue: recovery keeps orphaned data", file: "relay/queue/recover.go", from: "if os.Remove(filepath.Join(q.active, name)) == nil {", to: "if false {", pkgs: []string{"./relay/queue"}},

	// Upstream: TLS policy and classification.
	{name: "upstream: no STARTTLS check", file: "upstream/client.go", from: "\tif !hasExtension(ext, \"STARTTLS\") {", to: "\tif !hasExtension(ext, \"STARTTLS\") && false {", pkgs: []string{"./upstream"}},
	{name: "upstream: TLS 1.0 allowed", file: "upstream/client.go", from: "MinVersion: tls.VersionTLS12}", to: "MinVersion: tls.VersionTLS10}", pkgs: []string{"./upstream"}},
	{name: "upstream: unverified certificates", file: "upstream/client.go", from: "c.tlsCfg = &tls.Config{ServerName: c.cfg.Host, RootCAs: roots,", to: "c.tlsCfg = &tls.Config{InsecureSkipVerify: true, ServerName: c.cfg.Host, RootCAs: roots,", pkgs: []string{"./upstream"}},
	{name: "upstream: login without a verified chain", file: "upstream/client.go", from: "!st.HandshakeComplete || len(st.VerifiedChains) == 0", to: "!st.HandshakeComplete", pkgs: []string{"./upstream"},
		note: "equivalent while tls.Config verifies: a handshake that completes has a verified chain (the check is belt and braces)"},
	{name: "upstream: 5xx taken as temporary", file: "upstream/class.go", from: "\tcase e.Code >= 500:\n\t\treturn Permanent\n", to: "", pkgs: []string{"./upstream", "./relay"}},
	{name: "upstream: the daily limit not recognised", file: "upstream/class.go", from: "\tcase transaction && e.Code >= 400 && dailyLimitText.MatchString(e.Text):", to: "\tcase false:", pkgs: []string{"./upstream", "./relay", "./app", "./doctor"}, run: "Classified|DailyLimit|Cause"},
	{name: "upstream: a wrong host taken for interception", file: "upstream/class.go", from: "\t\tcase e.cause == causeCertHost && errors.As(e.Err, &hv):", to: "\t\tcase false:", pkgs: []string{"./upstream", "./app", "./doctor"}, run: "Classified|Cause"},
	{name: "upstream: no network taken for a DNS failure", file: "upstream/class.go", from: "\tif e.cause == causeNoNetwork {\n\t\treturn noNetworkAdvice\n\t}", to: "", pkgs: []string{"./cmd/icloud-relay"}, run: "NoNetwork"},
	{name: "upstream: done reported only at the end of a batch", file: "upstream/client.go", from: "\t\tt.m.finish(out[i]) // final: it goes no further, here or elsewhere\n", to: "", pkgs: []string{"./upstream"}, run: "Done"},

	// Scheduler: retries, give-up, pauses, holds, probes.
	{name: "scheduler: no jitter where retries are set", file: "relay/scheduler.go", from: "s.pol.RetryMax, rand.Float64())", to: "s.pol.RetryMax, 0.5+0*rand.Float64())", pkgs: []string{"./relay"}},
	{name: "scheduler: backoff does not double", file: "relay/policy.go", from: "math.Pow(2, float64(attempt-1))", to: "math.Pow(1, float64(attempt-1))", pkgs: []string{"./relay"}},
	{name: "scheduler: never gives up while unreachable", file: "relay/scheduler.go", from: "\t\tif !now.Before(expires) {\n\t\t\tit.busy = true", to: "\t\tif false {\n\t\t\tit.busy = true", pkgs: []string{"./relay"}},
	{name: "scheduler: never gives up when due", file: "relay/scheduler.go", from: "\t\tif !now.Before(m.Received.Add(s.pol.MaxAge)) {\n\t\t\ts.finish(", to: "\t\tif false {\n\t\t\ts.finish(", pkgs: []string{"./relay"}},
	{name: "scheduler: no pause on a refused login", file: "relay/scheduler.go", from: "\tcase upstream.PauseAccount:\n\t\tif !now.Before(s.pausedUntil) {", to: "\tcase upstream.PauseAccount:\n\t\tif false {", pkgs: []string{"./relay"}},
	{name: "scheduler: no daily-limit hold", file: "relay/scheduler.go", from: "\tcase upstream.HoldDailyLimit:\n\t\treturn s.dailyLimitPause(e)\n", to: "", pkgs: []string{"./relay"}},
	{name: "log: a remedy dropped from the daily-limit hold", file: "logging/events.go", from: "\tFailure(l.Error(), e).Time(KeyNextRetry, until).Int(KeySentToday, sent)", to: "\tl.Error().Time(KeyNextRetry, until).Int(KeySentToday, sent)", pkgs: []string{"./app"}, run: "DailyLimit|Cause"},
	{name: "scheduler: the probe does not drain", file: "relay/scheduler.go", from: "\t\t\tif !it.busy {\n\t\t\t\tit.msg.NextAttempt = now\n\t\t\t}", to: "\t\t\tif false {\n\t\t\t\tit.msg.NextAttempt = now\n\t\t\t}", pkgs: []string{"./relay"}},
	{name: "scheduler: replies not masked", file: "relay/scheduler.go", from: "\tue, res = s.mask(ue), s.maskResult(res)\n", to: "", pkgs: []string{"./cmd/icloud-relay"}, run: "EchoedPassword"},
	{name: "scheduler: a delivered message is not removed at once", file: "relay/scheduler.go", from: "\t\t\t\ts.remove(ready[i], logs[i])\n", to: "", pkgs: []string{"./relay"}},

	// Intake and the connection guard.
	{name: "guard: a failed transfer does not end the connection", file: "relay/conn.go", from: "\tif failed || now.Sub(c.accepted) > maxSession {", to: "\tif now.Sub(c.accepted) > maxSession {", pkgs: []string{"./app"}, run: "FailureInsideData|Stall"},
	{name: "guard: a timeout inside a message does not end it", file: "relay/conn.go", from: "\t\tc.ended = true\n\t\treturn n, &smtp.SMTPError{Code: 421", to: "\t\treturn n, &smtp.SMTPError{Code: 421", pkgs: []string{"./app"}, run: "Stall",
		note: "equivalent: the session's endData(failed) ends the connection right after; this only ends it one read sooner"},
	{name: "guard: the deadline counts from the DATA command", file: "relay/conn.go", from: "\tidle := now.Add(timeout)", to: "\tidle := c.dataStart.Add(timeout)", pkgs: []string{"./app"}, run: "SlowSteady"},
	{name: "guard: NOOP extends the time between messages", file: "relay/conn.go", from: "\tc.sinceWrite = 0\n", to: "\tc.sinceWrite = 0\n\tc.progress = time.Now()\n", pkgs: []string{"./app"}, run: "NOOPLoops|Trickling"},
	{name: "guard: no command line limit", file: "relay/conn.go", from: "c.sinceWrite > maxCommandLine", to: "false", pkgs: []string{"./app"}, run: "LongLinesAreRefused"},
	{name: "guard: no per-client cap", file: "relay/conn.go", from: "s.perClient[client] >= s.cfg.MaxConnectionsPerClient", to: "false", pkgs: []string{"./app"}, run: "OneClientCannot"},
	{name: "guard: loopback not always allowed", file: "relay/conn.go", from: "\tif isLocal(a) {\n\t\treturn true\n\t}\n\tfor", to: "\tfor", pkgs: []string{"./app"}, run: "AllowListKeeps"},
	{name: "auth: clear-text logins from other machines", file: "relay/auth.go", from: "\treturn isTLS || isLocal(ss.clientAddr())", to: "\treturn isTLS || true", pkgs: []string{"./app"}, run: "LoginsFromOther"},
	{name: "auth: failures counted per address, not per /64", file: "relay/conn.go", from: "\t\tbits = 64\n", to: "", pkgs: []string{"./relay"}},
	{name: "intake: a client's stall blamed on the queue", file: "relay/server.go", from: "\tcase errors.As(err, &ce) && errors.As(err, &se):", to: "\tcase false && errors.As(err, &ce) && errors.As(err, &se):", pkgs: []string{"./app"}, run: "Stall"},
	{name: "intake: long lines not re-encoded", file: "relay/intake.go", from: "\tif err == nil && longest > maxLineLength {", to: "\tif false && longest > maxLineLength {", pkgs: []string{"./app"}, run: "LongHTMLLine"},
	{name: "intake: quadratic header unfolding", file: "relay/message.go", from: "\t\t\tfields[len(fields)-1].end = raw.Len()\n", to: "\t\t\tfields[len(fields)-1].end = raw.Len()\n\t\t\t_ = string(raw.Bytes()[fields[len(fields)-1].start:])\n", pkgs: []string{"./relay"}, run: "FoldedHeader"},
	{name: "intake: a full disk answers 451", file: "relay/server.go", from: "\tif errors.Is(err, syscall.ENOSPC) {", to: "\tif false && errors.Is(err, syscall.ENOSPC) {", pkgs: []string{"./app"}, run: "FullDisk"},
	{name: "intake: a commit's cause lost", file: "relay/scheduler.go", from: "\t\ts.mu.Unlock()\n\t\treturn Outcome{}, err\n", to: "\t\ts.mu.Unlock()\n\t\treturn Outcome{}, errors.New(\"lost\")\n", pkgs: []string{"./app"}, run: "FullDiskBetween"},
	{name: "scheduler: a worker files a staged message its door owns", file: "relay/scheduler.go", from: "\tcase it.staged != nil:\n\t\tit.parked", to: "\tcase false:\n\t\tit.parked", pkgs: []string{"./relay"}, run: "OneOwner"},
	{name: "queue: a second commit writes again", file: "relay/queue/staged.go", from: "\tswitch st.state {\n\tcase committed:\n\t\treturn nil\n", to: "\tswitch st.state {\n", pkgs: []string{"./relay/queue"}, run: "SettlingTwice"},
	{name: "reload: the remembered port forgotten", file: "app/program.go", from: "\t\ta.Remember(p.cfg, ports)\n", to: "\t\t_ = ports\n", pkgs: []string{"./cmd/icloud-relay"}, run: "ReloadApplies"},
	{name: "reload: the new [log] settings not applied", file: "app/program.go", from: "\ta, err := p.newApp(cfg, log)\n", to: "\ta, err := p.newApp(cfg, p.log)\n", pkgs: []string{"./cmd/icloud-relay"}, run: "ReloadApplies"},
	{name: "logging: the password not handed to the redactor", file: "config/config.go", from: "\tr.AddLogin(c.Upstream.Username, c.Upstream.Password.Reveal())\n", to: "", pkgs: []string{"./cmd/icloud-relay"}, run: "EchoedPassword"},
	{name: "redact: no base64 forms", file: "internal/redact/redact.go", from: "\t\tr.add(s, base64.StdEncoding.EncodeToString([]byte(s)))", to: "\t\tr.add(s)", pkgs: []string{"./cmd/icloud-relay"}, run: "EchoedPassword"},
	{name: "intake: a failed commit of a burst answered 250", file: "relay/server.go", from: "\t\terr, st = s.in.q.Commit(st, m), nil\n", to: "\t\t_, st = s.in.q.Commit(st, m), nil\n", pkgs: []string{"./app"}, run: "FullDiskBetween"},
	{name: "bulk: a batch's round trip not measured", file: "relay/scheduler.go", from: "\t\troundTrip = max(roundTrip, d.RoundTrip)\n", to: "", pkgs: []string{"./relay"}, run: "NearUpstream"},
	{name: "upstream: the round trip timed on a message sent behind another", file: "upstream/client.go", from: "first: i == 0}", to: "first: true}", pkgs: []string{"./upstream"}, run: "RoundTrip"},
	{name: "bulk: a burst to a slow upstream waits for it", file: "relay/server.go", from: "\tif bulk && !s.sched.NearUpstream() {\n\t\twindow = 0\n", to: "\tif bulk && !s.sched.NearUpstream() {\n", pkgs: []string{"./app"}, run: "Burst"},
	{name: "service: the Linux account not a system account", file: "service/linuxaccount.go", from: "run(\"useradd\", \"--system\", ", to: "run(\"useradd\", ", pkgs: []string{"./service"}, run: "LinuxAccount"},
	{name: "service: a half-made macOS account left", file: "service/macaccount.go", from: "\t\t\tdscl(\"-delete\", user)", to: "", pkgs: []string{"./service"}, run: "MacAccount"},
	{name: "status: a relay of another version not pointed out", file: "cmd/icloud-relay/service.go", from: "if mine := out.ThisVersion; r.Version != mine {", to: "if mine := out.ThisVersion; false && r.Version != mine {", pkgs: []string{"./cmd/icloud-relay"}, run: "VersionIsEverywhere"},
}

func main() {
	only := flag.String("run", "", "run only the mutants whose name matches this regular expression")
	timeout := flag.Duration("timeout", 2*time.Minute, "how long one mutant's tests may take")
	flag.Parse()
	pick, err := regexp.Compile(*only)
	if err != nil {
		fail(err)
	}
	tmp, err := os.MkdirTemp("", "mutants-")
	if err != nil {
		fail(err)
	}
	defer os.RemoveAll(tmp)
	killed, survived, accepted := 0, 0, 0
	for i, m := range mutants {
		if !pick.MatchString(m.name) {
			continue
		}
		res := m.try(tmp, i, *timeout)
		switch {
		case strings.HasPrefix(res, "killed"):
			killed++
		case m.note != "":
			accepted++
			res += " (accepted: " + m.note + ")"
		default:
			survived++
		}
		fmt.Printf("%-8s %s\n", strings.Fields(res)[0], m.name+strings.TrimPrefix(res, strings.Fields(res)[0]))
	}
	total := killed + survived
	if total == 0 {
		fmt.Println("no mutant ran")
		return
	}
	fmt.Printf("\n%d killed, %d survived, %d accepted as equivalent: %.0f%% of the non-equivalent mutants killed\n",
		killed, survived, accepted, 100*float64(killed)/float64(total))
	if survived > 0 {
		os.Exit(1)
	}
}

// try plants m and runs its tests: "killed", "survived", or why it could
// not be planted (a mutant that no longer matches the code is a survivor:
// mend its from/to).
func (m mutant) try(tmp string, i int, timeout time.Duration) string {
	src, err := os.ReadFile(m.file)
	if err != nil {
		return "survived: " + err.Error()
	}
	if n := strings.Count(string(src), m.from); n != 1 {
		return fmt.Sprintf("survived: the code it changes is found %d times (want once): update the mutant", n)
	}
	mutated := filepath.Join(tmp, fmt.Sprintf("m%d.go", i))
	if err := os.WriteFile(mutated, []byte(strings.Replace(string(src), m.from, m.to, 1)), 0o600); err != nil {
		fail(err)
	}
	abs, _ := filepath.Abs(m.file)
	overlay, _ := json.Marshal(map[string]map[string]string{"Replace": {abs: mutated}})
	ovFile := filepath.Join(tmp, fmt.Sprintf("m%d.json", i))
	os.WriteFile(ovFile, overlay, 0o600)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	args := []string{"test", "-count=1", "-timeout", (timeout * 3 / 4).String()}
	if m.run != "" {
		args = append(args, "-run", m.run)
	}
	cmd := exec.CommandContext(ctx, "go", append(args, m.pkgs...)...)
	// Through GOFLAGS the overlay also reaches the binaries tests build
	// themselves (cmd/icloud-relay's TestMain runs go build).
	cmd.Env = append(os.Environ(), "GOFLAGS=-overlay="+ovFile)
	out, err := cmd.CombinedOutput()
	switch {
	case ctx.Err() != nil || strings.Contains(string(out), "panic: test timed out"):
		return "killed (the tests hung)"
	case err == nil:
		return "survived"
	case strings.Contains(string(out), "[build failed]") || strings.Contains(string(out), "[setup failed]"):
		return "survived: the mutant does not build; update it\n" + string(out)
	}
	return "killed"
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "mutants:", err)
	os.Exit(2)
}
