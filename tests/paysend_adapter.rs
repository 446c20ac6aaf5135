//! payrun's Paysend adapter against the sandbox: the example payroll's item trees are sent as
//! packed, signed requests and every answer — accepted, finished, replayed, refused with 3011,
//! declined, lost after commit — is classified into the verdict the executor acts on.

mod support;

use payrun::compile::Flow;
use payrun::execute::machine::Verdict;
use payrun::providers::paysend::{self, Answer};
use payrun::sandbox::SandboxConfig;
use payrun::schema::Registry;
use payrun::validate::{ItemRow, Visitor};
use serde_json::Value;
use std::time::Duration;
use support::paysend::{Client, sandbox};

/// Collects each valid item's key and Paysend task tree.
struct Trees<'f>(&'f Flow);

impl Visitor for Trees<'_> {
    type Chunk = Vec<(String, Vec<Value>)>;
    fn item(&self, item: &ItemRow, chunk: &mut Self::Chunk) {
        let key = payrun::keys::item_key(&self.0.manifest.batch, item.id);
        chunk.push((key.clone(), paysend::item_tree(self.0, item, &key)));
    }
}

fn payroll() -> (Flow, Vec<(String, Vec<Value>)>) {
    let path = support::root().join("batches/payroll-paysend/manifest.yaml");
    let prepared = payrun::pipeline::prepare(&path, &Registry::Embedded)
        .unwrap_or_else(|f| panic!("{:?}", f.diagnostics));
    let flow = prepared.flow;
    let mut source = prepared.source;
    let mut trees = Vec::new();
    let report = payrun::validate::validate(
        &flow,
        &mut source,
        10,
        &Trees(&flow),
        |c: Vec<(String, Vec<Value>)>| trees.extend(c),
    )
    .unwrap();
    assert!(report.is_ok());
    (flow, trees)
}

async fn send(c: &Client, s: &paysend::Submission) -> Answer {
    let r = c
        .http
        .post(format!("{}/processing", c.base))
        .header("content-type", "application/json")
        .header("X-OPP-Signature", &s.signature)
        .body(s.body.clone())
        .send()
        .await;
    match r {
        Ok(resp) => Answer::Http {
            status: resp.status().as_u16(),
            body: resp.bytes().await.unwrap_or_default().to_vec(),
            retry_after: None,
        },
        Err(e) => Answer::Transport {
            maybe_sent: true,
            why: e.to_string(),
        },
    }
}

async fn status(c: &Client, global_id: &str) -> Value {
    c.http
        .get(format!("{}/processing/status/{global_id}", c.base))
        .header(
            "X-OPP-Signature",
            paysend::sign(global_id.as_bytes(), &c.key),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn pack(c: &Client, items: &[(String, Vec<Value>)]) -> paysend::Submission {
    let keys: Vec<&str> = items.iter().map(|(k, _)| k.as_str()).collect();
    let trees: Vec<Value> = items.iter().flat_map(|(_, t)| t.clone()).collect();
    paysend::submission(
        &c.partner,
        &c.key,
        &keys,
        trees,
        None,
        "2026-11-21T10:00:00+00:00",
    )
}

fn fast() -> SandboxConfig {
    SandboxConfig {
        time_scale: 1000.0,
        ..SandboxConfig::default()
    }
}

#[tokio::test]
async fn a_packed_payroll_request_is_accepted_then_every_item_succeeds_once() {
    let (flow, items) = payroll();
    let (_sb, c) = sandbox(fast()).await;
    let first = &items[..5];
    let sub = pack(&c, first);
    let answer = send(&c, &sub).await;
    let verdicts = paysend::classify_submission(&flow, &answer, first.len());
    assert!(
        verdicts
            .iter()
            .all(|v| matches!(v, Verdict::Accepted { .. } | Verdict::Succeeded { .. })),
        "{verdicts:?}"
    );
    let Answer::Http { body, .. } = &answer else {
        unreachable!()
    };
    let global = serde_json::from_slice::<Value>(body).unwrap()["header"]["response"]["globalId"]
        .as_str()
        .unwrap()
        .to_string();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let done = paysend::classify_envelope(&flow, &status(&c, &global).await, first.len());
    for v in &done {
        assert!(
            matches!(v, Verdict::Succeeded { ids, .. } if ids.contains_key("paymentId") && ids["globalId"] == global),
            "{v:?}"
        );
    }
    // The same pack again is a replay, not a second payment.
    let again = paysend::classify_submission(&flow, &send(&c, &sub).await, first.len());
    assert!(
        again.iter().all(|v| matches!(v, Verdict::Succeeded { .. })),
        "{again:?}"
    );
    let ledger = c.ledger().await;
    assert_eq!(ledger.len(), 5);
    let keys: Vec<&str> = first.iter().map(|(k, _)| k.as_str()).collect();
    assert!(
        ledger
            .iter()
            .all(|e| keys.contains(&e["key"].as_str().unwrap())),
        "invoiceId is the item key"
    );
}

#[tokio::test]
async fn an_item_paid_in_another_pack_is_reported_as_already_existing_not_failed() {
    let (flow, items) = payroll();
    let (_sb, c) = sandbox(fast()).await;
    send(&c, &pack(&c, &items[..2])).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    // A different pack (so a different request id) that contains item 1 again.
    let sub = pack(&c, &items[1..3]);
    let Answer::Http { body, .. } = send(&c, &sub).await else {
        panic!("no answer")
    };
    let global = serde_json::from_slice::<Value>(&body).unwrap()["header"]["response"]["globalId"]
        .as_str()
        .unwrap()
        .to_string();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let v = paysend::classify_envelope(&flow, &status(&c, &global).await, 2);
    assert_eq!(v[0], Verdict::AlreadyExists);
    assert!(matches!(v[1], Verdict::Succeeded { .. }));
    assert_eq!(c.ledger().await.len(), 3);
}

#[tokio::test]
async fn an_answer_lost_after_commit_is_in_doubt_and_the_lookup_finds_the_payment() {
    let (flow, items) = payroll();
    let mut cfg = fast();
    cfg.faults.drop_after_commit_rate = 1.0;
    let (sb, c) = sandbox(cfg).await;
    let verdicts = paysend::classify_submission(&flow, &send(&c, &pack(&c, &items[..1])).await, 1);
    assert_eq!(verdicts, vec![Verdict::InDoubt]);
    // A lookup whose own answer is lost is no verdict about the payment.
    let lost = paysend::lookup(
        &c.partner,
        &c.key,
        &items[0].0,
        0,
        "2026-11-21T10:00:00+00:00",
    );
    assert!(matches!(
        paysend::classify_lookup(&send(&c, &lost).await),
        Verdict::RetryLater { .. }
    ));
    sb.set_faults(payrun::sandbox::Faults::default());
    let key = &items[0].0;
    // Too early: the payment is not visible yet (3006) — the machine reads that as "not yet".
    let early = paysend::lookup(&c.partner, &c.key, key, 1, "2026-11-21T10:00:00+00:00");
    assert_eq!(
        paysend::classify_lookup(&send(&c, &early).await),
        Verdict::Unknown
    );
    tokio::time::sleep(Duration::from_millis(200)).await; // 200 s of provider time > 3 minutes
    let late = paysend::lookup(&c.partner, &c.key, key, 2, "2026-11-21T10:00:00+00:00");
    assert!(matches!(
        paysend::classify_lookup(&send(&c, &late).await),
        Verdict::Succeeded { .. }
    ));
    assert_eq!(c.ledger().await.len(), 1, "paid exactly once");
}

#[tokio::test]
async fn a_declined_payout_and_a_busy_provider_are_classified_apart() {
    let (flow, items) = payroll();
    let mut cfg = fast();
    cfg.paysend.rate_limit = Some(payrun::sandbox::config::RateLimit {
        requests_per_second: 1,
        burst: 1,
    });
    let (_sb, c) = sandbox(cfg).await;
    // transferAmount 4006 is the Mock Service's trigger for a decline.
    let (key, mut tree) = items[0].clone();
    tree[0]["payload"]["transferAmount"] = serde_json::json!(4006);
    let sub = paysend::submission(
        &c.partner,
        &c.key,
        &[&key],
        tree,
        None,
        "2026-11-21T10:00:00+00:00",
    );
    let Answer::Http { body, .. } = send(&c, &sub).await else {
        panic!("no answer")
    };
    let global = serde_json::from_slice::<Value>(&body).unwrap()["header"]["response"]["globalId"]
        .as_str()
        .unwrap()
        .to_string();
    let busy = send(&c, &pack(&c, &items[1..2])).await;
    assert!(matches!(
        paysend::classify_submission(&flow, &busy, 1)[0],
        Verdict::RetryLater { .. }
    ));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let v = paysend::classify_envelope(&flow, &status(&c, &global).await, 1);
    assert!(
        matches!(&v[0], Verdict::Failed { code, .. } if code == "4006"),
        "{v:?}"
    );
}
