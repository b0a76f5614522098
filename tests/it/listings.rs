//! Long listings in pages: `stats` shows the drifting products first and a page of the rest,
//! `dead list` a page of the dead letters, and `dead requeue --all` / `dead drop --all` work
//! through more dead letters than one read takes.

use serde_json::Value;

use crate::helpers::TestEnv;

fn product_ids(stats: &Value) -> Vec<i64> {
    let products = stats["products"].as_array().expect("products array");
    products.iter().map(|p| p["product_id"].as_i64().unwrap()).collect()
}

async fn json_of(env: &TestEnv, args: &[&str]) -> Value {
    let (code, out, err) = env.run(args).await;
    assert_eq!(code, 0, "{args:?}: {out}{err}");
    assert_eq!(out.trim().lines().count(), 1, "{args:?} prints one JSON document:\n{out}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{args:?}: {e}:\n{out}"))
}

/// Each garbage entry is dead-lettered on its own, so the newest dead letter holds the last.
async fn dead_letter_garbage(env: &TestEnv, names: impl IntoIterator<Item = String>) {
    for name in names {
        env.push_raw(name.as_bytes()).await;
        assert_eq!(env.drain(1).await.iter().map(|r| r.dead).sum::<u64>(), 1, "{name}");
    }
}

#[tokio::test]
async fn stats_pages_through_products_drifting_first() {
    let env = TestEnv::new().await;
    for p in 1..=250 {
        env.stock(p, 100).await;
    }
    // MySQL changed behind stockq's back: product 200 drifts the most, 7 and 100 tie
    for (id, by) in [(7, 5), (100, -5), (200, 9)] {
        sqlx::query("UPDATE products SET stock = stock + ? WHERE id = ?")
            .bind(by)
            .bind(id)
            .execute(&env.mysql)
            .await
            .unwrap();
    }

    let page = json_of(&env, &["stats", "--json", "--limit", "5"]).await;
    assert_eq!(product_ids(&page), vec![200, 7, 100, 1, 2]);
    assert_eq!((page["products_total"].as_u64(), page["drifting_total"].as_u64()), (Some(250), Some(3)));
    assert_eq!((page["offset"].as_u64(), page["limit"].as_u64()), (Some(0), Some(5)));
    assert_eq!(page["consistent"], Value::Bool(false));
    assert_eq!(page["products"][0]["delta"].as_i64(), Some(-9));

    let default = json_of(&env, &["stats", "--json"]).await;
    assert_eq!(product_ids(&default).len(), 20, "20 by default, in JSON as in text");
    let all = json_of(&env, &["stats", "--json", "--limit", "0"]).await;
    let ids = product_ids(&all);
    assert_eq!(ids.len(), 250);
    assert_eq!(ids[..4], [200, 7, 100, 1]);
    let last = json_of(&env, &["stats", "--json", "--offset", "247"]).await;
    assert_eq!(product_ids(&last), vec![248, 249, 250]);
    let past = json_of(&env, &["stats", "--json", "--offset", "250"]).await;
    assert_eq!((product_ids(&past), past["products_total"].as_u64()), (vec![], Some(250)));

    let (code, out, err) = env.run(&["stats", "--limit", "4"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("DRIFT in 3 of 250 products"), "{out}");
    let rows: Vec<i64> = out.lines().filter_map(|l| l.split_whitespace().next()?.parse().ok()).collect();
    assert_eq!(rows, vec![200, 7, 100, 1], "{out}");
    assert!(out.contains("... and 246 more (stockq stats --limit 0 lists all)"), "{out}");
}

#[tokio::test]
async fn dead_list_pages_newest_first_in_one_document() {
    let env = TestEnv::new().await;
    let empty = json_of(&env, &["dead", "list", "--json"]).await;
    assert_eq!(empty, serde_json::json!({"total": 0, "offset": 0, "limit": 100, "dead": []}));

    dead_letter_garbage(&env, (1..=5).map(|i| format!("garbage-{i}"))).await;
    let page = json_of(&env, &["dead", "list", "--json", "--limit", "2", "--offset", "1"]).await;
    assert_eq!(page["total"].as_u64(), Some(5));
    let entries: Vec<&str> =
        page["dead"].as_array().unwrap().iter().map(|d| d["entry"].as_str().unwrap()).collect();
    assert_eq!(entries, vec!["garbage-4", "garbage-3"]);
    assert!(page["dead"][0]["reason"].as_str().unwrap().contains("not JSON"), "{page}");

    let all = json_of(&env, &["dead", "list", "--json", "--limit", "0"]).await;
    assert_eq!(serde_json::to_value(env.dead_letters().await).unwrap(), all["dead"], "as stored");

    let (code, out, err) = env.run(&["dead", "list", "--limit", "2"]).await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "5 dead letters, newest first", "{out}");
    assert!(lines[1].ends_with("garbage-5") && lines[2].ends_with("garbage-4"), "{out}");
    assert_eq!(lines[3], "... and 3 more (stockq dead list --offset 2 lists the next ones)", "{out}");
    assert_eq!(lines.len(), 4, "{out}");
}

/// More dead letters than one read takes, most of them left in place by `requeue --all`
/// (not valid events) around the two it sends on, then all dropped.
#[tokio::test]
async fn dead_requeue_and_drop_all_work_through_thousands() {
    let env = TestEnv::new().await;
    let garbage = 2_500;
    for i in 0..garbage {
        env.push_raw(format!("garbage-{i}").as_bytes()).await;
        if i == 700 || i == 1_900 {
            let event = format!(r#"{{"event_id":"lost-{i}","product_id":77,"qty":1}}"#);
            env.push_raw(event.as_bytes()).await;
        }
    }
    env.drain(500).await;
    assert_eq!(env.len("dead").await, garbage + 2);

    let (code, out, err) = env.run(&["dead", "requeue", "--all"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("requeued 2"), "{out}");
    assert!(out.contains(&format!("left {garbage} entries")), "{out}");
    assert_eq!((env.len("dead").await, env.len("pending").await), (garbage, 2));

    let (code, out, err) = env.run(&["dead", "drop", "--all"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("dropped {garbage}, gave back 0")), "{out}");
    assert_eq!(env.len("dead").await, 0);
}

#[tokio::test]
async fn bad_page_values_are_one_line_and_exit_2() {
    let env = TestEnv::new().await;
    for args in [
        &["stats", "--limit", "x"][..],
        &["stats", "--offset=-1"][..],
        &["dead", "list", "--limit", "2000000000"][..],
        &["dead", "list", "--offset", "1.5"][..],
    ] {
        let (code, out, err) = env.run(args).await;
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: one line on stderr: {err}");
        assert!(err.contains("--limit") || err.contains("--offset"), "{args:?}: {err}");
    }
}
