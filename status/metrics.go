package status

import (
	"fmt"
	"io"
	"sort"
	"sync"

	"github.com/VictoriaMetrics/metrics"

	"github.com/icloud-relay/icloud-relay/relay"
	"github.com/icloud-relay/icloud-relay/upstream"
)

// Sample is what /metrics shows: the scheduler's health and totals, the
// upstream client's connection counts, and the report's queue and state.
type Sample struct {
	Health   relay.Health
	Upstream upstream.Stats
	Report   Report
}

// VictoriaMetrics/metrics writes "# HELP"/"# TYPE" lines only when asked,
// process-wide; the relay has one metrics page, so it is asked once.
var metadata sync.Once

// holds are the states /metrics reports one gauge each for.
var holds = []upstream.Class{upstream.Unreachable, upstream.PauseAccount, upstream.Throttled, upstream.HoldDailyLimit}

// writeMetrics writes smp in the Prometheus text format. The values are
// the relay's own totals (they restart from zero with the relay, as
// Prometheus counters may), set into a fresh set per scrape: nothing is
// counted twice and no state lives here.
func writeMetrics(w io.Writer, smp Sample) {
	metadata.Do(func() { metrics.ExposeMetadata(true) })
	set := metrics.NewSet()
	h, c := smp.Health, smp.Health.Counts
	set.NewCounter("icloud_relay_messages_accepted_total").Set(c.Accepted)
	set.NewCounter("icloud_relay_messages_delivered_total").Set(c.Delivered)
	set.NewCounter("icloud_relay_delivery_attempts_total").Set(c.Attempts)
	keys := make([]relay.FailKey, 0, len(c.Failed))
	for k := range c.Failed {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		return keys[i].Stage+upstream.Stage(keys[i].Class) < keys[j].Stage+upstream.Stage(keys[j].Class)
	})
	for _, k := range keys {
		set.NewCounter(fmt.Sprintf("icloud_relay_messages_failed_total{stage=%q,class=%q}", k.Stage, k.Class)).Set(c.Failed[k])
	}
	if len(keys) == 0 {
		set.NewCounter("icloud_relay_messages_failed_total").Set(0)
	}
	set.NewCounter("icloud_relay_upstream_connections_total").Set(uint64(smp.Upstream.Connections))
	set.NewCounter("icloud_relay_upstream_logins_total").Set(uint64(smp.Upstream.Logins))
	gauge(set, "icloud_relay_upstream_idle_connections", float64(smp.Upstream.Idle))
	gauge(set, "icloud_relay_upstream_port", float64(smp.Report.Port))
	gauge(set, "icloud_relay_queue_messages", float64(smp.Report.Queued))
	gauge(set, "icloud_relay_failed_messages", float64(smp.Report.FailedCount))
	gauge(set, "icloud_relay_queue_oldest_age_seconds", float64(smp.Report.OldestSeconds))
	ok := 0.0
	if smp.Report.OK {
		ok = 1
	}
	gauge(set, "icloud_relay_mail_can_flow", ok)
	for _, cl := range holds {
		v := 0.0
		if h.Hold == cl {
			v = 1
		}
		gauge(set, fmt.Sprintf("icloud_relay_deliveries_held{reason=%q}", cl), v)
	}
	gauge(set, "icloud_relay_sent_last_24h_messages", float64(h.SentToday))
	gauge(set, "icloud_relay_sent_last_24h_recipients", float64(h.RecipientsToday))
	gauge(set, "icloud_relay_daily_limit", float64(h.DailyLimit))
	if !h.LastDelivery.IsZero() {
		gauge(set, "icloud_relay_last_delivery_timestamp_seconds", float64(h.LastDelivery.Unix()))
	}
	set.WritePrometheus(w)
}

func gauge(set *metrics.Set, name string, v float64) {
	set.NewGauge(name, nil).Set(v)
}
