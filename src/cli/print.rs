//! The reports of the commands as text (or JSON) on stdout; their wording is part of the
//! command line's contract, so it lives apart from what the commands do.

use serde_json::json;

use crate::admin::Page;
use crate::admin::stats::Stats;
use crate::check::CheckReport;
use crate::event::DeadLetter;
use crate::queue::Entry;
use crate::tools::produce::ProduceReport;

/// A check's report; `last` is false for the drift found before a repair, whose JSON is not
/// printed (one JSON object per run).
pub(super) fn check(report: &CheckReport, json: bool, last: bool) {
    if json {
        if last {
            let drifts: Vec<_> = report.drifts().collect();
            outln!(
                "{}",
                json!({
                    "consistent": report.is_consistent(),
                    "seq": report.seq,
                    "products_checked": report.products.len(),
                    "took_ms": report.took.as_millis() as u64,
                    "drifts": drifts,
                })
            );
        }
        return;
    }
    for p in report.drifts() {
        outln!(
            "drift: product {}: redis {}{}, mysql {}, in-flight {}, expected redis {}, delta {:+}",
            p.product_id,
            p.redis.unwrap_or(0),
            if p.redis.is_none() { " (key missing)" } else { "" },
            p.mysql,
            p.in_flight,
            p.expected_redis,
            p.delta
        );
    }
    if last {
        let n = report.drifts().count();
        if n == 0 {
            outln!(
                "consistent: {} products, redis == mysql − in-flight (seq {}, {} ms)",
                report.products.len(),
                report.seq,
                report.took.as_millis()
            );
        } else {
            outln!("{n} of {} products drifted", report.products.len());
        }
    }
}

/// A spread product's buckets under its row: `spread: shard 0 120, shard 2 95 (+5 on their way)`.
pub(super) fn spread_line(p: &crate::check::ProductBooks) -> String {
    let buckets: Vec<String> = p.buckets.iter().map(|b| format!("shard {} {}", b.shard, b.stock)).collect();
    let transit = if p.in_transit > 0 { format!(" (+{} on their way)", p.in_transit) } else { String::new() };
    format!("spread: {}{transit}", buckets.join(", "))
}

pub(super) fn stats(stats: &Stats) {
    let (s, b) = (&stats.overview, &stats.books);
    outln!("queue        {}", s.queue);
    if let Some(p) = &s.deductions_paused {
        outln!(
            "PAUSED       deductions, since {} by {} (`stockq resume`)",
            utc_millis(p.since.max(0) as u64),
            p.by
        );
    }
    if !s.paused_products.is_empty() {
        let list: Vec<String> = s.paused_products.iter().map(|p| p.product_id.to_string()).collect();
        outln!("paused       the sale of product(s) {} (`stockq stock resume <product>`)", list.join(", "));
    }
    match s.oldest_pending_age_ms {
        Some(ms) if s.pending > 0 => {
            outln!("pending      {} (the oldest waiting {})", s.pending, seconds(ms as i64))
        }
        _ => outln!("pending      {}", s.pending),
    }
    outln!("processing   {}", s.processing);
    outln!(
        "next claim   {}",
        match s.claim_expires_in_ms {
            None => "-".to_string(),
            Some(ms) if ms >= 0 => format!("expires in {}", seconds(ms)),
            Some(ms) => format!("overdue by {} (its worker stopped; the janitor re-queues it)", seconds(-ms)),
        }
    );
    outln!("dead         {}", s.dead);
    outln!("held         {} unpaid", s.held);
    outln!("cancelling   {} (in the queue), releasing {} (to MySQL)", s.cancelling, s.releasing);
    outln!("workers      {} live, {:.0} events/s", s.live_workers.len(), s.throughput.max(0.0));
    for w in &s.live_workers {
        outln!("  {}  applied {}  rejected {}  {:.0}/s", w.id, w.applied, w.rejected, w.rate);
    }
    let counters: Vec<String> = s.counters.iter().map(|(k, v)| format!("{k} {v}")).collect();
    outln!("totals       {}", counters.join(", "));
    if !s.refusals.is_empty() {
        let products: Vec<String> = s
            .refusals
            .iter()
            .map(|(p, kinds)| {
                let kinds: Vec<String> =
                    kinds.iter().map(|(k, n)| format!("{} {n}", k.replace('_', " "))).collect();
                format!("product {p}: {}", kinds.join(", "))
            })
            .collect();
        outln!("refused      {}", products.join("; "));
    }
    if b.consistent {
        outln!("books        consistent, {} products", b.products_total);
    } else {
        outln!(
            "books        DRIFT in {} of {} products (see stockq check)",
            b.drifting_total,
            b.products_total
        );
    }
    if b.offset > 0 {
        outln!("... {} products before these", b.offset);
    }
    outln!("{:>12} {:>12} {:>12} {:>10} {:>8}", "product", "redis", "mysql", "in-flight", "delta");
    for p in &b.products {
        outln!(
            "{:>12} {:>12} {:>12} {:>10} {:>+8}",
            p.product_id,
            p.redis.map(|r| r.to_string()).unwrap_or_else(|| "-".into()),
            p.mysql,
            p.in_flight,
            p.delta
        );
        if !p.buckets.is_empty() {
            outln!("{:>12} {}", "", spread_line(p));
        }
    }
    let more = b.products_total.saturating_sub(b.offset + b.products.len());
    if more > 0 {
        outln!("... and {more} more (stockq stats --limit 0 lists all)");
    }
}

/// Milliseconds as seconds with one decimal: `8.3s`.
fn seconds(ms: i64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

pub(super) fn produce(report: &ProduceReport, json: bool) {
    if json {
        let mut v = serde_json::to_value(report).unwrap_or_default();
        v["per_second"] = json!(report.per_second());
        outln!("{v}");
        return;
    }
    let l = &report.latency;
    outln!(
        "reserved {} and sold out {} (unknown product {}) in {:.2}s: {:.0} reservations/s; \
         latency p50 {}us p99 {}us p99.9 {}us max {}us",
        report.reserved,
        report.sold_out,
        report.unknown_product,
        report.elapsed.as_secs_f64(),
        report.per_second(),
        l.p50_us,
        l.p99_us,
        l.p999_us,
        l.max_us
    );
    if report.limited > 0 {
        outln!("refused by a buyer limit: {}", report.limited);
    }
    if let Some(c) = &report.cancels {
        let l = &c.latency;
        outln!(
            "cancelled {} in {:.2}s: {:.0} cancels/s; latency p50 {}us p99 {}us max {}us",
            c.cancelled,
            c.elapsed.as_secs_f64(),
            c.per_second,
            l.p50_us,
            l.p99_us,
            l.max_us
        );
    }
}

/// `dead list`, printed a chunk at a time as it is read. With `--json`, one document
/// `{"total", "offset", "limit", "dead": [envelope, ...]}`, each envelope as stored (an entry
/// that is not JSON, which stockq never writes, as a string); else a count, then one line
/// per dead letter: the event id, attempts, time, reason and the start of the entry.
pub(super) struct DeadLetters {
    total: u64,
    page: Page,
    json: bool,
    shown: usize,
}

impl DeadLetters {
    pub(super) fn start(total: u64, page: Page, json: bool) -> DeadLetters {
        if json {
            out!(
                r#"{{"total":{total},"offset":{},"limit":{},"dead":["#,
                page.offset,
                page.limit.unwrap_or(0)
            );
        } else if total == 0 {
            outln!("no dead letters");
        } else {
            let skipped =
                if page.offset > 0 { format!(", after the first {}", page.offset) } else { String::new() };
            outln!("{total} dead letter{}, newest first{skipped}", if total == 1 { "" } else { "s" });
        }
        DeadLetters { total, page, json, shown: 0 }
    }

    pub(super) fn add(&mut self, envelopes: &[Entry]) {
        let mut out = String::new();
        for raw in envelopes {
            if self.json {
                if self.shown > 0 {
                    out.push(',');
                }
                out.push_str(&envelope_json(raw));
            } else {
                out.push_str(&dead_line(raw));
                out.push('\n');
            }
            self.shown += 1;
        }
        out!("{out}");
    }

    pub(super) fn finish(self) {
        if self.json {
            outln!("]}}");
            return;
        }
        let next = self.page.offset + self.shown;
        let more = self.total.saturating_sub(next as u64);
        if more > 0 {
            outln!("... and {more} more (stockq dead list --offset {next} lists the next ones)");
        }
    }
}

fn envelope_json(raw: &[u8]) -> String {
    match serde_json::from_slice::<serde::de::IgnoredAny>(raw) {
        Ok(_) => String::from_utf8_lossy(raw).into_owned(),
        Err(_) => json!(String::from_utf8_lossy(raw)).to_string(),
    }
}

fn dead_line(raw: &[u8]) -> String {
    let start = |bytes: &[u8]| String::from_utf8_lossy(bytes).chars().take(120).collect::<String>();
    match DeadLetter::parse(raw) {
        Some(d) => format!(
            "{}\tattempts {}\tfailed_at {}\t{}\t{}",
            d.event().map(|e| e.event_id).unwrap_or_else(|| "-".into()),
            d.attempts,
            utc_millis(d.failed_at_ms),
            d.reason,
            start(&d.entry)
        ),
        None => format!("-\tnot a stockq dead letter\t{}", start(raw)),
    }
}

/// Unix milliseconds as an RFC 3339 UTC time: `2026-11-30T14:02:07.513Z`; past the year 9999
/// (a hand-made envelope), the number as it is.
pub(super) fn utc_millis(ms: u64) -> String {
    const LAST_MS: u64 = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z
    if ms > LAST_MS {
        return format!("{ms} ms");
    }
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_people_write_them() {
        assert_eq!(utc_millis(1_767_225_600_123), "2026-01-01T00:00:00.123Z");
        assert_eq!(utc_millis(u64::MAX), format!("{} ms", u64::MAX));
        assert_eq!(utc_millis(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
        assert_eq!(seconds(8_300), "8.3s");
        assert_eq!(seconds(-1_500), "-1.5s");
    }
}
