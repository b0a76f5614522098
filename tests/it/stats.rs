//! `stockq stats` (docs/commands.md): the waits it shows are read from what Redis holds, on
//! the Redis clock, so they are the same whoever asks and whatever their own visibility
//! timeout; and every running total is shown, 0 until it first moves.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::TestEnv;

#[tokio::test]
async fn stats_reads_the_same_whoever_asks_and_shows_every_total() {
    let env = TestEnv::with(|s| s.delivery.visibility_timeout = Duration::from_secs(30)).await;
    env.stock(1, 10).await;
    let stats = |timeout: &'static str| {
        let mut cmd = env.command(&["stats", "--json"]);
        cmd.env("STOCKQ_VISIBILITY_TIMEOUT", timeout);
        async move {
            let out = cmd.output().await.unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            serde_json::from_slice::<Value>(&out.stdout).unwrap()
        }
    };

    // nothing happened yet: every total is there, at 0
    let fresh = stats("10s").await;
    for total in ["applied", "rejected", "duplicates", "redelivered", "requeued", "dead"] {
        assert_eq!(fresh["counters"][total], 0, "{total}: {fresh}");
    }
    assert!(fresh["claim_expires_in_ms"].is_null() && fresh["oldest_pending_age_ms"].is_null(), "{fresh}");
    let (code, text, _) = env.run(&["stats"]).await;
    assert_eq!(code, 0);
    let totals = text.lines().find(|l| l.starts_with("totals")).unwrap();
    assert!(totals.contains("applied 0") && totals.contains("requeued 0"), "{totals}");

    // one event waits, one is claimed by a worker whose visibility timeout is 30 s
    env.reserve_ok(1, 1, "a").await;
    env.reserve_ok(1, 1, "b").await;
    let claim = env.queue.claim(1, None).await.unwrap();
    assert_eq!(claim.entries.len(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (short, long) = (stats("1s").await, stats("5m").await);
    for s in [&short, &long] {
        let left = s["claim_expires_in_ms"].as_i64().unwrap();
        assert!((20_000..30_000).contains(&left), "the claim's own deadline, whoever asks: {s}");
        assert!(s["oldest_pending_age_ms"].as_u64().is_some_and(|age| age >= 300), "{s}");
    }
    let drift =
        short["claim_expires_in_ms"].as_i64().unwrap() - long["claim_expires_in_ms"].as_i64().unwrap();
    assert!(drift.abs() < 5_000, "{short} vs {long}");
    let (_, text, _) = env.run(&["stats"]).await;
    assert!(text.lines().any(|l| l.starts_with("next claim   expires in 2")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("pending      1 (the oldest waiting")), "{text}");

    // a claim past its deadline, not yet re-queued: overdue
    let mut hasty = env.settings.clone();
    hasty.delivery.visibility_timeout = Duration::from_millis(100);
    let hasty = stockq::Queue::connect(&hasty).await.unwrap();
    let late = hasty.claim(1, None).await.unwrap();
    env.wait_past(late.deadline_ms + 200).await;
    let overdue = stats("10s").await;
    assert!(overdue["claim_expires_in_ms"].as_i64().unwrap() <= -200, "{overdue}");
    let (_, text, _) = env.run(&["stats"]).await;
    assert!(text.lines().any(|l| l.starts_with("next claim   overdue by")), "{text}");
}
