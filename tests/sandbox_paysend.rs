//! The Paysend emulation behaves as paysend-enterprise-api.txt describes: signatures, envelope
//! errors, task-tree semantics, the Mock Service's triggers, idempotent replays, 3011, 3009,
//! statuses that unfold in time, the status window and the task.statusGet propagation delay.

mod support;

use payrun::sandbox::SandboxConfig;
use payrun::sandbox::config::RateLimit;
use serde_json::json;
use std::time::Duration;
use support::paysend::{sandbox, sign, to_account, to_card};

/// Provider time 1000× faster: accept 200 ms → 0.2 ms, a level 500 ms → 0.5 ms.
fn fast() -> SandboxConfig {
    SandboxConfig {
        time_scale: 1000.0,
        ..SandboxConfig::default()
    }
}

/// Waits real time long enough for `provider` time to pass at 1000×.
async fn after(provider: Duration) {
    tokio::time::sleep(provider / 1000 + Duration::from_millis(20)).await;
}

#[tokio::test]
async fn a_request_without_a_valid_signature_is_refused_with_401() {
    let (_sb, c) = sandbox(fast()).await;
    let body =
        serde_json::to_vec(&c.envelope("r1", json!([to_account("inv-1", "10", "EUR")]))).unwrap();
    assert_eq!(c.post_raw(body.clone(), None).await.unwrap().status, 401);
    assert_eq!(
        c.post_raw(body.clone(), Some(sign(&body, "wrong-key")))
            .await
            .unwrap()
            .status,
        401
    );
    assert_eq!(
        c.post_raw(body.clone(), Some("00".repeat(32)))
            .await
            .unwrap()
            .status,
        401
    );
    // SHA-512 is accepted as well as SHA-256, and hex case does not matter.
    use sha2::{Digest, Sha512};
    let sha512: String = Sha512::new()
        .chain_update(&body)
        .chain_update(c.key.as_bytes())
        .finalize()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    assert_eq!(c.post_raw(body, Some(sha512)).await.unwrap().status, 200);
    assert_eq!(c.ledger().await.len(), 1, "only the signed request paid");
}

#[tokio::test]
async fn a_request_without_header_request_or_tasks_is_a_400() {
    let (_sb, c) = sandbox(fast()).await;
    for body in [
        json!({"payload": {"partner": {"identifier": c.partner}, "tasks": []}}),
        c.envelope("r2", json!([])),
        json!({"header": {}}),
    ] {
        let a = c.post(&body).await;
        assert_eq!(a.status, 400, "{body}");
    }
    let garbage = b"{not json".to_vec();
    let sig = sign(&garbage, &c.key);
    assert_eq!(c.post_raw(garbage, Some(sig)).await.unwrap().status, 400);
}

#[tokio::test]
async fn an_unknown_partner_is_refused() {
    let (_sb, c) = sandbox(fast()).await;
    let mut body = c.envelope("r3", json!([to_account("inv-3", "10", "EUR")]));
    body["payload"]["partner"]["identifier"] = json!("someone-else");
    assert_eq!(c.post(&body).await.status, 401);
}

#[tokio::test]
async fn a_payout_is_accepted_then_in_progress_then_finished() {
    // Real time: accepted for 1 s, then one level of 1 s.
    let mut cfg = SandboxConfig {
        time_scale: 1.0,
        ..SandboxConfig::default()
    };
    cfg.paysend.accept_time = Duration::from_secs(1);
    cfg.paysend.level_time = Duration::from_secs(1);
    let (_sb, c) = sandbox(cfg).await;
    let first = c
        .run(json!([to_account("inv-4", "10.50", "EUR")]))
        .await
        .json();
    assert_eq!(first["result"], json!({"status": "Accepted", "code": 0}));
    assert_eq!(first["payload"]["tasks"][0]["result"]["status"], "Accepted");
    let gid = first["header"]["response"]["globalId"]
        .as_str()
        .unwrap()
        .to_string();
    // Poll until finished; the request and its task must pass through every state, in order.
    let mut seen: Vec<(String, String)> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let done = loop {
        let a = c.status(&gid).await.json();
        let state = (
            a["result"]["status"].as_str().unwrap().to_string(),
            a["payload"]["tasks"][0]["result"]["status"]
                .as_str()
                .unwrap()
                .to_string(),
        );
        if seen.last() != Some(&state) {
            seen.push(state);
        }
        if a["result"]["status"] == "Finished" || std::time::Instant::now() > deadline {
            break a;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let want = [
        ("Accepted", "Accepted"),
        ("InProgress", "InProgress"),
        ("Finished", "Success"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(seen, want);
    assert_eq!(done["result"], json!({"status": "Finished", "code": 2}));
    let r = &done["payload"]["tasks"][0]["result"];
    assert_eq!(r["code"], 0);
    assert!(
        r["data"]["paymentId"].is_string() && r["data"]["traceId"].is_string(),
        "{r}"
    );
    let ledger = c.ledger().await;
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0]["amount"], "10.50");
    assert_eq!(ledger[0]["key"], "inv-4");
    assert!(
        !ledger[0].to_string().contains("DE89370400440532013000"),
        "the ledger keeps a digest, not the IBAN"
    );
}

#[tokio::test]
async fn the_same_request_id_replays_the_first_answer_without_paying_again() {
    let (_sb, c) = sandbox(fast()).await;
    let body = c.envelope("same-id", json!([to_account("inv-5", "25", "EUR")]));
    let a = c.post(&body).await.json();
    let b = c.post(&body).await.json();
    assert_eq!(
        a["header"]["response"]["globalId"],
        b["header"]["response"]["globalId"]
    );
    assert_eq!(c.ledger().await.len(), 1);
    assert_eq!(c.counters().await["replays"], 1);
}

#[tokio::test]
async fn the_same_request_id_with_another_date_is_a_new_request_not_a_replay() {
    // Idempotency is header.request.id and header.request.date together (L7021-7029).
    let (_sb, c) = sandbox(fast()).await;
    let first = c.envelope("same-id-2", json!([to_account("inv-5b", "25", "EUR")]));
    let mut later = first.clone();
    later["header"]["request"]["date"] = json!("2026-11-21T10:05:00+00:00");
    let a = c.post(&first).await.json();
    let b = c.post(&later).await.json();
    assert_ne!(
        a["header"]["response"]["globalId"], b["header"]["response"]["globalId"],
        "a new request"
    );
    assert_eq!(c.counters().await["replays"], 0);
    after(Duration::from_secs(2)).await;
    assert_eq!(
        c.ledger().await.len(),
        1,
        "its payout met the invoiceId check"
    );
}

#[tokio::test]
async fn a_second_payment_with_a_paid_invoice_id_is_refused_with_3011() {
    let (_sb, c) = sandbox(fast()).await;
    assert_eq!(
        c.run(json!([to_account("inv-6", "25", "EUR")]))
            .await
            .status,
        200
    );
    after(Duration::from_secs(2)).await;
    let second = c.run(json!([to_account("inv-6", "25", "EUR")])).await;
    let gid = second.json()["header"]["response"]["globalId"]
        .as_str()
        .unwrap()
        .to_string();
    after(Duration::from_secs(2)).await;
    let r = c.status(&gid).await.task();
    assert_eq!(r["code"], 3011, "{r}");
    assert_eq!(r["comment"], "Payment with this invoiceId already exists.");
    assert_eq!(c.ledger().await.len(), 1);
    assert_eq!(c.counters().await["duplicates_refused"], 1);
}

#[tokio::test]
async fn a_payout_larger_than_the_balance_fails_with_3009() {
    let mut cfg = fast();
    cfg.paysend.balances.insert("EUR".into(), "100.00".into());
    let (_sb, c) = sandbox(cfg).await;
    let a = c
        .run(json!([
            to_account("inv-7", "60", "EUR"),
            to_account("inv-8", "60", "EUR")
        ]))
        .await;
    let gid = a.json()["header"]["response"]["globalId"]
        .as_str()
        .unwrap()
        .to_string();
    after(Duration::from_secs(2)).await;
    let done = c.status(&gid).await.json();
    assert_eq!(done["payload"]["tasks"][0]["result"]["status"], "Success");
    assert_eq!(done["payload"]["tasks"][1]["result"]["code"], 3009);
    assert_eq!(c.ledger().await.len(), 1);
}

/// The answer once every level has run.
async fn finished(c: &support::paysend::Client, tasks: serde_json::Value) -> serde_json::Value {
    let a = c.run(tasks).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let gid = a.json()["header"]["response"]["globalId"]
        .as_str()
        .unwrap()
        .to_string();
    after(Duration::from_secs(5)).await;
    let done = c.status(&gid).await.json();
    assert_eq!(done["result"]["status"], "Finished", "{done}");
    done
}

#[tokio::test]
async fn every_documented_trigger_yields_its_error_code() {
    let (_sb, c) = sandbox(fast()).await;
    let account = [
        1000, 2000, 3008, 4003, 4006, 4007, 4008, 4009, 4010, 4011, 4012, 4013, 4014, 4015, 4016,
        4017, 4018, 9999,
    ];
    let card = [
        1000, 2000, 3002, 3008, 4000, 4002, 4003, 4004, 4005, 4006, 4007, 9999,
    ];
    let mut tasks = Vec::new();
    for code in account {
        tasks.push((
            code,
            to_account(&format!("t-a-{code}"), &code.to_string(), "EUR"),
        ));
    }
    for code in card {
        tasks.push((
            code,
            to_card(&format!("t-c-{code}"), &code.to_string(), "840"),
        ));
    }
    for code in [1000, 3005] {
        tasks.push((code, json!({"type": "fx.rateGet", "payload": {"currencyIn": "EUR", "currencyOut": "GBP", "amountIn": code, "paysystem": "VISA"}})));
        tasks.push((code, json!({"type": "fx.rateGet.p2a", "payload": {"payoutAmount": code.to_string(), "payinCurrency": "USD", "payoutCountry": "PK", "payoutCurrency": "PKR"}})));
    }
    tasks.push((
        1000,
        json!({"type": "getBalance", "payload": {"currency": "1000"}}),
    ));
    tasks.push((3006, json!({"type": "partner.statementGet", "payload": {"currency": "3006", "pageNumber": 1, "pageSize": 20}})));
    tasks.push((1000, json!({"type": "card.infoGet", "payload": {}})));
    let done = finished(
        &c,
        json!(tasks.iter().map(|(_, t)| t.clone()).collect::<Vec<_>>()),
    )
    .await;
    for (i, (code, t)) in tasks.iter().enumerate() {
        let r = &done["payload"]["tasks"][i]["result"];
        assert_eq!(r["status"], "Error", "{t}: {r}");
        assert_eq!(r["code"], *code, "{t}: {r}");
        assert!(r["comment"].as_str().is_some_and(|s| !s.is_empty()));
    }
    assert!(c.ledger().await.is_empty(), "no trigger moves money");
}

#[tokio::test]
async fn the_documented_status_get_identifiers_answer_with_their_codes() {
    let (_sb, c) = sandbox(fast()).await;
    let done = finished(
        &c,
        json!([
            {"type": "task.statusGet", "payload": {"identifier": "3720f209-2f47-4fcc-4003-1526826f97c9"}},
            {"type": "task.statusGet", "payload": {"invoiceId": "INV-P2A-4017"}},
            {"type": "task.statusGet", "payload": {"invoiceId": "INV-3006"}},
            {"type": "task.statusGet", "payload": {"invoiceId": "INV-P2C-4000"}}
        ]),
    )
    .await;
    let codes: Vec<_> = (0..4)
        .map(|i| done["payload"]["tasks"][i]["result"]["code"].clone())
        .collect();
    assert_eq!(codes, [4003, 4017, 3006, 4000]);
}

#[tokio::test]
async fn an_invalid_payout_payload_gets_a_2000_with_the_documented_validation_result() {
    let (_sb, c) = sandbox(fast()).await;
    let mut t = to_card("inv-9", "15", "840");
    t["payload"]["to"]["amount"] = json!(0);
    let done = finished(&c, json!([t])).await;
    let r = &done["payload"]["tasks"][0]["result"];
    assert_eq!(r["code"], 2000);
    assert_eq!(
        r["data"]["validationResult"]["message"],
        "Validation error."
    );
    assert_eq!(
        r["data"]["validationResult"]["errors"][0]["path"],
        "to.amount"
    );
    assert_eq!(
        r["data"]["validationResult"]["errors"][0]["value"],
        "amount"
    );
}

#[tokio::test]
async fn fail_children_run_only_on_failure_and_always_children_always() {
    let (_sb, c) = sandbox(fast()).await;
    let probe = |inv: &str| json!({"type": "task.statusGet", "payload": {"invoiceId": inv}});
    let mut ok = to_account("tree-ok", "10", "EUR");
    ok["success"] = json!([probe("INV-3005")]);
    ok["fail"] = json!([probe("INV-3006")]);
    ok["always"] = json!([{"type": "getBalance", "payload": {"currency": "EUR"}}]);
    let mut bad = to_account("tree-bad", "4006", "EUR");
    bad["success"] = json!([probe("INV-3005")]);
    bad["fail"] = json!([probe("INV-3006")]);
    bad["always"] = json!([{"type": "getBalance", "payload": {}}]);
    let done = finished(&c, json!([ok, bad])).await;
    let t = &done["payload"]["tasks"];
    assert_eq!(
        t[0]["success"][0]["result"]["code"], 3005,
        "success child of a success ran"
    );
    assert!(
        t[0]["fail"][0].get("result").is_none(),
        "fail child of a success never ran"
    );
    assert_eq!(t[0]["always"][0]["result"]["status"], "Success");
    assert!(t[1]["success"][0].get("result").is_none());
    assert_eq!(
        t[1]["fail"][0]["result"]["code"], 3006,
        "fail child of a failure ran"
    );
    assert_eq!(t[1]["always"][0]["result"]["status"], "Success");
}

#[tokio::test]
async fn task_status_get_finds_a_payment_only_after_the_propagation_delay() {
    let (_sb, c) = sandbox(fast()).await;
    let paid = finished(&c, json!([to_account("inv-10", "10", "EUR")])).await;
    let payment_id = paid["payload"]["tasks"][0]["result"]["data"]["paymentId"]
        .as_str()
        .unwrap()
        .to_string();
    // Provider time since acceptance: a few seconds, far below 3 minutes.
    let early = finished(
        &c,
        json!([{"type": "task.statusGet", "payload": {"invoiceId": "inv-10"}}]),
    )
    .await;
    assert_eq!(early["payload"]["tasks"][0]["result"]["code"], 3006);
    after(Duration::from_secs(180)).await;
    let late = finished(&c, json!([{"type": "task.statusGet", "payload": {"identifier": payment_id}}, {"type": "task.statusGet", "payload": {"invoiceId": "inv-10"}}])).await;
    for i in 0..2 {
        let r = &late["payload"]["tasks"][i]["result"];
        assert_eq!(r["status"], "Success", "{r}");
        assert_eq!(r["data"]["status"]["description"], "Completed");
        assert_eq!(r["data"]["invoiceId"], "inv-10");
    }
    let never = finished(
        &c,
        json!([{"type": "task.statusGet", "payload": {"invoiceId": "never-sent"}}]),
    )
    .await;
    assert_eq!(
        never["payload"]["tasks"][0]["result"]["code"], 3006,
        "a payment never made is not found"
    );
}

#[tokio::test]
async fn the_global_id_status_answers_only_inside_its_window_and_only_when_signed() {
    let mut cfg = fast();
    cfg.paysend.status_window = Duration::from_secs(60);
    let (_sb, c) = sandbox(cfg).await;
    let a = c
        .run(json!([{"type": "getBalance", "payload": {}}]))
        .await
        .json();
    let gid = a["header"]["response"]["globalId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(c.status(&gid).await.status, 200);
    let unsigned = c
        .http
        .get(format!("{}/processing/status/{gid}", c.base))
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status().as_u16(), 401);
    after(Duration::from_secs(61)).await;
    let expired = c.status(&gid).await;
    assert_eq!(expired.status, 400);
    assert_eq!(expired.json()["code"], 3006);
}

#[tokio::test]
async fn over_the_rate_limit_the_documented_404_comes_back() {
    let mut cfg = fast();
    cfg.paysend.rate_limit = Some(RateLimit {
        requests_per_second: 1,
        burst: 3,
    });
    let (_sb, c) = sandbox(cfg).await;
    let mut busy = 0;
    for i in 0..10 {
        let a = c
            .run(json!([to_account(&format!("rl-{i}"), "1", "EUR")]))
            .await;
        if a.status == 404 {
            assert_eq!(a.text, "Sorry. Can't accept your request now.");
            busy += 1;
        }
    }
    assert!(
        (6..=7).contains(&busy),
        "{busy} of 10 refused with burst 3 at 1/s"
    );
    assert_eq!(c.counters().await["rate_limited"], busy);
    assert_eq!(c.ledger().await.len(), 10 - busy as usize);
}

#[tokio::test]
async fn get_balance_reports_what_payouts_debited() {
    let mut cfg = fast();
    cfg.paysend.balances.insert("EUR".into(), "1000.00".into());
    let (_sb, c) = sandbox(cfg).await;
    finished(&c, json!([to_account("bal-1", "250.25", "EUR")])).await;
    let done = finished(
        &c,
        json!([{"type": "getBalance", "payload": {"currency": "EUR"}}]),
    )
    .await;
    assert_eq!(
        done["payload"]["tasks"][0]["result"]["data"]["balances"],
        json!({"EUR": 749.75})
    );
}

#[test]
fn the_documented_webhook_signature_example_holds() {
    use md5::{Digest, Md5};
    let body = r#"{"webhookType":"TransactionStatusUpdate","invoiceId":"MTCN123456789","transactionId":"5d8149f7-9dd5-4784-9f25-3da3215b8a7g","status":"OnHold","statusDateTime":"2025-06-19T00:27:01.810858+03:00","errorCode":"5","errorDescription":"Offline Antifraud check: RFI","rrn":null,"arn":null,"traceId":null}"#;
    let sig: String = Md5::new()
        .chain_update(body)
        .chain_update("14130906-70e2-44ae-9ac1-e5f0688ebd77")
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(sig, "1f373068bd1a17e4ad2ab4462e054d37");
}

#[tokio::test]
async fn a_sync_request_that_finishes_within_its_wait_time_is_answered_finished() {
    // Real time: accept 200 ms + one level 500 ms = 700 ms, inside WaitFor2000 but not WaitFor500.
    let (_sb, c) = sandbox(SandboxConfig::default()).await;
    let mut body = c.envelope("sync-1", json!([{"type": "getBalance", "payload": {}}]));
    body["header"]["service"] = json!({"sync": true, "waitTime": "WaitFor2000"});
    assert_eq!(c.post(&body).await.json()["result"]["status"], "Finished");
    let mut body = c.envelope("sync-2", json!([{"type": "getBalance", "payload": {}}]));
    body["header"]["service"] = json!({"sync": true, "waitTime": "WaitFor500"});
    assert_eq!(c.post(&body).await.json()["result"]["status"], "InProgress");
}

#[tokio::test]
async fn a_held_payout_reports_code_5_until_its_review_ends_then_completes() {
    let mut cfg = fast();
    cfg.faults.on_hold_rate = 1.0;
    cfg.faults.hold_time = Some(Duration::from_secs(600));
    let (_sb, c) = sandbox(cfg).await;
    let done = finished(&c, json!([to_account("held-1", "42", "EUR")])).await;
    let r = &done["payload"]["tasks"][0]["result"];
    assert_eq!(
        (r["status"].as_str(), r["code"].as_i64()),
        (Some("Error"), Some(5)),
        "{r}"
    );
    assert_eq!(
        c.ledger().await.len(),
        1,
        "a held payout is not declined: the money is reserved"
    );
    after(Duration::from_secs(180)).await;
    let during = finished(
        &c,
        json!([{"type": "task.statusGet", "payload": {"invoiceId": "held-1"}}]),
    )
    .await;
    assert_eq!(during["payload"]["tasks"][0]["result"]["code"], 5);
    assert_eq!(
        during["payload"]["tasks"][0]["result"]["data"]["status"]["description"],
        "OnHold"
    );
    after(Duration::from_secs(600)).await;
    let after_review = finished(
        &c,
        json!([{"type": "task.statusGet", "payload": {"invoiceId": "held-1"}}]),
    )
    .await;
    assert_eq!(
        after_review["payload"]["tasks"][0]["result"]["data"]["status"]["description"],
        "Completed"
    );
    assert_eq!(c.ledger().await.len(), 1, "released, not paid again");
}

/// `v` without the dates the sandbox writes from its clock at each answer (they move by
/// microseconds between two renderings of one instant).
fn undated(mut v: serde_json::Value) -> serde_json::Value {
    v["header"]["response"]
        .as_object_mut()
        .map(|r| r.remove("date"));
    fn tasks(ts: &mut serde_json::Value) {
        for t in ts.as_array_mut().into_iter().flatten() {
            t.as_object_mut().map(|o| o.remove("expiration"));
            for b in ["success", "fail", "always"] {
                tasks(&mut t[b]);
            }
        }
    }
    tasks(&mut v["payload"]["tasks"]);
    v
}

#[tokio::test]
async fn status_answers_and_replays_echo_the_first_request_whole_with_every_result() {
    // Memory is saved by keeping requests sealed outside it and results as fields: what comes
    // back must be what was sent, results and all — for UUID invoiceIds (kept as bytes) and
    // others, cards and accounts, branches taken and not.
    let (_sb, c) = sandbox(fast()).await;
    let uuid = |n: u32| format!("{n:08x}-0000-4000-8000-{n:012x}");
    let mut account = to_account(&uuid(1), "10.50", "EUR");
    account["success"] = json!([to_card(&uuid(2), "7.25", "EUR")]);
    account["fail"] = json!([to_card(&uuid(3), "1", "EUR")]);
    let tasks = json!([
        account,
        to_account("inv-text-1", "4017", "EUR"),
        {"type": "getBalance", "payload": {"currency": "EUR"}},
        to_card(&uuid(4), "1500", "JPY"),
    ]);
    let mut body = c.envelope("echo-1", tasks.clone());
    body["payload"]["settings"] = json!({"culture": "en-GB"});
    let first = c.post(&body).await.json();
    let gid = first["header"]["response"]["globalId"]
        .as_str()
        .unwrap()
        .to_string();
    after(Duration::from_secs(5)).await;
    let done = c.status(&gid).await.json();
    assert_eq!(done["result"]["status"], "Finished", "{done}");
    assert_eq!(done["header"]["request"], body["header"]["request"]);
    assert_eq!(done["header"]["service"], body["header"]["service"]);
    assert_eq!(done["payload"]["settings"], body["payload"]["settings"]);
    assert_eq!(
        done["payload"]["partner"],
        json!({"identifier": c.partner, "parameters": {}})
    );
    let t = &done["payload"]["tasks"];
    for i in 0..4 {
        assert_eq!(t[i]["type"], tasks[i]["type"]);
        assert_eq!(
            t[i]["payload"], tasks[i]["payload"],
            "task {i} echoed whole"
        );
    }
    assert_eq!(
        t[0]["success"][0]["payload"],
        tasks[0]["success"][0]["payload"]
    );
    assert_eq!(t[0]["fail"][0]["payload"], tasks[0]["fail"][0]["payload"]);
    assert!(
        t[0]["fail"][0].get("result").is_none(),
        "a branch not taken"
    );
    let paid = &t[0]["success"][0]["result"]["data"];
    assert_eq!(
        paid["finance"]["to"],
        json!({"amount": 7.25, "currency": "EUR"})
    );
    assert_eq!(paid["traceId"], paid["rrn"]);
    assert_eq!(t[1]["result"]["code"], 4017);
    assert!(t[2]["result"]["data"]["balances"]["EUR"].is_number());
    assert_eq!(t[3]["result"]["data"]["finance"]["to"]["amount"], 1500);

    // A replay, and a request under the same id and date with another body: both get the first
    // answer, and pay nothing.
    let replay = c.post(&body).await.json();
    let mut other = body.clone();
    other["payload"]["tasks"] = json!([to_account(&uuid(9), "1", "EUR")]);
    let other = c.post(&other).await.json();
    assert_eq!(undated(replay.clone()), undated(done.clone()));
    assert_eq!(undated(other), undated(done));
    assert_eq!(c.counters().await["replays"], 2);
    let ledger = c.ledger().await;
    assert_eq!(ledger.len(), 3, "{ledger:?}");
    assert_eq!(ledger[0]["key"], uuid(1));
    assert_eq!(ledger[0]["amount"], "10.50");
    assert_eq!(ledger[0]["request_id"], "echo-1");
    assert_eq!(
        ledger[0]["payment_id"],
        replay["payload"]["tasks"][0]["result"]["data"]["paymentId"]
    );
    // Found by its paymentId (kept as bytes, as is its UUID invoiceId), once it propagated.
    after(Duration::from_secs(200)).await;
    let found = finished(
        &c,
        json!([{"type": "task.statusGet", "payload": {"identifier": ledger[1]["payment_id"]}}]),
    )
    .await;
    let data = &found["payload"]["tasks"][0]["result"]["data"];
    assert_eq!(ledger[1]["key"], uuid(4), "level 0 paid before level 1");
    assert_eq!(data["invoiceId"], uuid(4), "{found}");
    assert_eq!(data["finance"]["to"]["amount"], 1500);
}
