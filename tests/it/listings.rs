//! Long listings in pages: `stats` shows the drifting products first and a page of the rest.

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
async fn bad_page_values_are_one_line_and_exit_2() {
    let env = TestEnv::new().await;
    for args in [
        &["stats", "--limit", "x"][..],
        &["stats", "--offset=-1"][..],
        &["stats", "--limit", "2000000000"][..],
        &["stats", "--offset", "1.5"][..],
    ] {
        let (code, out, err) = env.run(args).await;
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: one line on stderr: {err}");
        assert!(err.contains("--limit") || err.contains("--offset"), "{args:?}: {err}");
    }
}
