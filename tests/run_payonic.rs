//! `payrun run` driving Payonic's async request → notification flow against a `payrun sandbox`
//! process: refunds accepted now and completed by a notification later, or never (settled
//! through the Payment API); forged notifications rejected; `kill -9` while waiting, then
//! `resume`; the sandbox's ledger as judge.

mod support;

use serde_json::Value;
use std::time::Duration;
use support::payonic::*;
use support::run::*;

/// A refund still waiting for its outcome, as the report shows it during a run: (item,
/// responseid, payment).
fn a_waiting_refund(dir: &std::path::Path, sb: &Sandbox) -> Option<(String, String, String)> {
    let mut waiting = None;
    eventually(Duration::from_secs(10), || {
        waiting = report(dir, sb)
            .iter()
            .find(|r| !r[17].is_empty() && &r[2] != "paid")
            .and_then(|r| {
                let (rid, payment) = r[17].split_once('@')?;
                Some((r[0].to_string(), rid.to_string(), payment.to_string()))
            });
        waiting.is_some()
    });
    waiting
}

#[test]
fn refunds_are_completed_by_their_notifications_and_each_paid_once() {
    let sb = sandbox_with_payments(40, &[], "5m");
    let dir = tempfile::tempdir().unwrap();
    refunds(dir.path(), &sb, 40, free_port());
    succeeds(payrun(dir.path(), &sb, &RUN));
    let rows = report(dir.path(), &sb);
    assert_eq!(rows.len(), 40);
    assert!(rows.iter().all(|r| &r[2] == "paid"), "{rows:?}");
    each_paid_once(&sb, 40);
}

#[test]
fn refunds_whose_notifications_never_come_are_settled_through_the_payment_api() {
    // Every notification is dropped: only the Payment API (whose answer is itself a
    // notification, dropped at the same rate) can tell; half of those get through.
    let sb = sandbox_with_payments(20, &["webhook_drop_rate=0.5"], "500ms");
    let dir = tempfile::tempdir().unwrap();
    refunds(dir.path(), &sb, 20, free_port());
    let out = payrun(dir.path(), &sb, &RUN).output().unwrap();
    let rows = report(dir.path(), &sb);
    let paid = rows.iter().filter(|r| &r[2] == "paid").count();
    let review = rows.iter().filter(|r| &r[2] == "needs_review").count();
    assert_eq!(
        paid + review,
        20,
        "nothing silently failed: {rows:?}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        paid >= 15,
        "most settled through the Payment API: {paid}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    each_paid_once(&sb, 20);
    let lookups = sb.requests("GET /payonic/api/{paymentid}/payment 200");
    assert!(lookups > 0, "the Payment API was asked: {}", sb.counters());
}

#[test]
fn forged_notifications_are_rejected_and_change_nothing() {
    let port = free_port();
    // Slow notifications (30 provider minutes, 1.8 s here): the run waits while the forgeries
    // arrive.
    let sb = sandbox_with_payments(5, &[], "30m");
    let dir = tempfile::tempdir().unwrap();
    refunds(dir.path(), &sb, 5, port);
    let mut run = Killed(payrun(dir.path(), &sb, &RUN).spawn().unwrap());
    let forged = serde_json::json!({"responseid": "0000", "paymentid": "rf00000001", "responsecode": "51", "status": "declined"});
    let listening = eventually(Duration::from_secs(10), || {
        post(port, "/payonic/notify/not-the-token", &forged) == Some(404)
    });
    assert!(
        listening,
        "a notification without the batch's token is refused"
    );
    // With the right token (derived from the API key and the batch), a responseid no item
    // waits for passes the listener and is rejected by the runner.
    let url = format!("/payonic/notify/{}", token(&sb, "refunds-test"));
    // Held (202: a notification may overtake the answer it follows), and rejected when no
    // such answer comes.
    assert_eq!(post(port, &url, &forged), Some(202));
    // The real responseid of a waiting refund (the report shows it during the run), with an
    // amount other than the one refunded: a forgery, rejected.
    let mut waiting = None;
    assert!(
        eventually(Duration::from_secs(10), || {
            waiting = report(dir.path(), &sb)
                .iter()
                .find(|r| !r[17].is_empty() && &r[2] != "paid")
                .map(|r| {
                    let key = r[10].replace('-', "");
                    let minor = r[7].replace('.', ""); // DKK: two decimals
                    (
                        r[0].to_string(),
                        r[17].to_string(),
                        r[18].to_string(),
                        key,
                        minor,
                    )
                });
            waiting.is_some()
        }),
        "a refund waits for its notification"
    );
    let (item, reference, trace, key, minor) = waiting.unwrap();
    // An accepted refund: waiting, or under review once its lookups went unanswered.
    let (rid, payment) = reference.split_once('@').unwrap();
    assert_eq!(payment, item, "the reference names the refunded payment");
    assert_eq!(trace.len(), 32, "the TraceApi sent is kept: {trace}");
    let wrong_amount = serde_json::json!({"responseid": rid, "paymentid": payment, "amount": 1, "responsecode": "51", "status": "declined"});
    assert_eq!(post(port, &url, &wrong_amount), Some(422));
    // A Payment API answer to a lookup payrun never made, listing nothing: held, then rejected
    // too (it could otherwise pass for "never processed" and get the refund sent again).
    let no_lookup = serde_json::json!({"responseid": "1234", "paymentid": payment, "amount": 2000, "currency": "DKK", "operations": []});
    assert_eq!(post(port, &url, &no_lookup), Some(202));
    // Payment API answers listing the refund under the item's key, approved, answering no
    // lookup of payrun's: held, then rejected. The note payrun sent is not the item key the
    // report shows but a value keyed with the batch's secret, so nobody can name the item.
    let listing = |payment: &str, amount: &str| {
        serde_json::json!({"responseid": "5678", "paymentid": payment, "operations": [
            {"operationtype": "refund", "note": key, "amount": amount, "currency": "DKK", "responsecode": "00", "status": "approved"}
        ]})
    };
    assert_eq!(post(port, &url, &listing(payment, &minor)), Some(202));
    assert_eq!(post(port, &url, &listing(payment, "1")), Some(202));
    // A life cycle update (L461-472) about that payment: acknowledged, of no consequence.
    let life_cycle = serde_json::json!({"paymentid": payment, "merchantpaymentid": payment});
    assert_eq!(post(port, &url, &life_cycle), Some(200));
    // The genuine outcome, delivered twice: taken once, the copy recognised by its digest.
    let genuine = serde_json::json!({"responseid": rid, "paymentid": payment, "responsecode": "00", "authorizationcode": "654321", "status": "approved"});
    assert_eq!(post(port, &url, &genuine), Some(200));
    assert_eq!(post(port, &url, &genuine), Some(200));
    let status = run.0.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let out = run
        .0
        .stdout
        .take()
        .map(std::io::read_to_string)
        .unwrap()
        .unwrap();
    assert!(out.contains("1 duplicates, 5 rejected"), "{out}");
    let rows = report(dir.path(), &sb);
    assert!(
        rows.iter().all(|r| &r[2] == "paid"),
        "the forged declines changed nothing: {rows:?}"
    );
    each_paid_once(&sb, 5);
}

#[test]
fn a_run_killed_while_waiting_for_notifications_resumes_and_refunds_each_payment_once() {
    let port = free_port();
    // Notifications an hour of provider time (3.6 s here) after each request.
    let sb = sandbox_with_payments(30, &[], "1h");
    let dir = tempfile::tempdir().unwrap();
    refunds(dir.path(), &sb, 30, port);
    let mut run = Killed(payrun(dir.path(), &sb, &RUN).spawn().unwrap());
    let status = |dir: &std::path::Path| -> Option<Value> {
        let out = payrun(
            dir,
            &sb,
            &[
                "status",
                "refunds-test",
                "--state-dir",
                "state",
                "--format",
                "json",
            ],
        )
        .output()
        .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    };
    let waiting = eventually(Duration::from_secs(15), || {
        // A run that ended early (another test took the listener's port between `free_port`
        // and the bind) says why instead of timing out silently.
        if let Ok(Some(code)) = run.0.try_wait() {
            let said = std::io::read_to_string(run.0.stderr.take().unwrap()).unwrap_or_default();
            panic!("the run ended early ({code}): {said}");
        }
        status(dir.path()).is_some_and(|s| s["states"]["submitted"] == 30)
    });
    assert!(
        waiting,
        "all 30 accepted and waiting: {:?}",
        status(dir.path())
    );
    drop(run); // kill -9
    // The notifications come while payrun is down: lost. Resume asks the Payment API.
    succeeds(payrun(dir.path(), &sb, &RESUME));
    let rows = report(dir.path(), &sb);
    assert!(rows.iter().all(|r| &r[2] == "paid"), "{rows:?}");
    each_paid_once(&sb, 30);
}

#[test]
fn payouts_whose_answers_were_lost_after_paying_are_found_by_their_note_not_paid_twice() {
    // A third of the payouts are made and their answers dropped; Payonic has no idempotency
    // key for payouts, so only the Payment API lookup (by the key in `note`) prevents a second
    // payout.
    let sb = sandbox_with_payments(30, &["drop_after_commit_rate=0.3"], "1m");
    let dir = tempfile::tempdir().unwrap();
    payouts(dir.path(), &sb, 30, free_port());
    succeeds(payrun(dir.path(), &sb, &RUN));
    let rows = report(dir.path(), &sb);
    assert!(rows.iter().all(|r| &r[2] == "paid"), "{rows:?}");
    each_paid_once(&sb, 30);
    let c = sb.counters();
    assert!(
        c["dropped_after_commit"].as_u64().unwrap_or(0) > 0,
        "answers were lost: {c}"
    );
}

#[test]
fn a_run_killed_between_a_refund_being_taken_and_its_responseid_being_recorded_resumes_without_refunding_twice()
 {
    for n in [1, 7] {
        let sb = sandbox_with_payments(12, &[], "10m");
        let dir = tempfile::tempdir().unwrap();
        refunds(dir.path(), &sb, 12, free_port());
        let out = payrun(dir.path(), &sb, &RUN)
            .env("PAYRUN_CRASH_AT", format!("after-send:{n}"))
            .output()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), Some(9), "killed at after-send:{n}");
        succeeds(payrun(dir.path(), &sb, &RESUME));
        let rows = report(dir.path(), &sb);
        assert!(
            rows.iter().all(|r| &r[2] == "paid"),
            "after-send:{n}: {rows:?}"
        );
        each_paid_once(&sb, 12);
    }
}

#[test]
fn notifications_that_overtake_their_requests_answers_are_held_until_the_answer_comes() {
    // Posted the moment each refund is processed, racing its HTTP answer: a notification
    // that wins is held, not lost, so nothing waits for the deadline and the Payment API.
    let sb = sandbox_with_payments(40, &[], "0ms");
    let dir = tempfile::tempdir().unwrap();
    refunds(dir.path(), &sb, 40, free_port());
    // A deadline (an hour of provider time, 3.6 s here) no loaded machine comes near.
    let manifest = dir.path().join("manifest.yaml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let text = text.replace("notifications:\n", "notifications:\n  deadline: 1h\n");
    std::fs::write(&manifest, text).unwrap();
    let out = succeeds(payrun(dir.path(), &sb, &RUN));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("40 taken, 0 duplicates, 0 rejected"),
        "{said}"
    );
    let rows = report(dir.path(), &sb);
    assert!(rows.iter().all(|r| &r[2] == "paid"), "{rows:?}");
    each_paid_once(&sb, 40);
    assert_eq!(
        sb.requests("GET /payonic/api/{paymentid}/payment 200"),
        0,
        "no item had to be looked up: {}",
        sb.counters()
    );
}

#[test]
fn a_run_killed_after_journaling_notifications_acts_on_them_when_resumed() {
    {
        let n = 1;
        let sb = sandbox_with_payments(12, &[], "10m");
        let dir = tempfile::tempdir().unwrap();
        refunds(dir.path(), &sb, 12, free_port());
        // Killed with notifications durable in the journal, neither acknowledged nor acted on.
        let out = payrun(dir.path(), &sb, &RUN)
            .env("PAYRUN_CRASH_AT", format!("after-journal:{n}"))
            .output()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), Some(9), "killed at after-journal:{n}");
        let resumed = succeeds(payrun(dir.path(), &sb, &RESUME));
        let said = String::from_utf8_lossy(&resumed.stdout);
        assert!(
            said.contains("journaled before the stop taken now"),
            "after-journal:{n}: {said}"
        );
        let rows = report(dir.path(), &sb);
        assert!(
            rows.iter().all(|r| &r[2] == "paid"),
            "after-journal:{n}: {rows:?}"
        );
        each_paid_once(&sb, 12);
    }
}

#[test]
fn a_reconciliation_batch_reads_each_payment_through_the_payment_api() {
    let port = free_port();
    let sb = sandbox_with_payments(10, &[], "1m");
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::from("payment\n");
    for i in 1..=10 {
        csv.push_str(&format!("rf{i:08}\n"));
    }
    std::fs::write(dir.path().join("payments.csv"), csv).unwrap();
    std::fs::write(
        dir.path().join("manifest.yaml"),
        format!(
            "batch: refunds-test\nprovider: payonic\nenvironment: {}/payonic\ncredentials:\n  api_key: PAYONIC_API_KEY\nitems:\n  source: payments.csv\n  columns: {{id: payment, paymentid: payment}}\nflow:\n  - op: payment\n    payload:\n      paymentid: ${{item.paymentid}}\nnotifications:\n  listen: 127.0.0.1:{port}\n  public_url: http://127.0.0.1:{port}\n",
            sb.root
        ),
    )
    .unwrap();
    succeeds(payrun(dir.path(), &sb, &RUN));
    let rows = report(dir.path(), &sb);
    assert_eq!(rows.len(), 10);
    assert!(
        rows.iter().all(|r| &r[2] == "done" && r[3] == r[0]),
        "{rows:?}"
    );
    assert!(sb.ledger().is_empty(), "reading moves no money");
}

#[test]
fn a_batch_is_refused_before_anything_is_sent_when_health_reports_its_api_down() {
    for api in ["refund", "payment"] {
        let sb = sandbox()
            .payonic("generate: {prefix: rf, count: 3, amount: 100000, currency: DKK, state: captured}")
            .payonic(&format!(
                "health: {{{api}: {{status: error, msg: No response received from the API request.}}}}"
            ))
            .start();
        let dir = tempfile::tempdir().unwrap();
        refunds(dir.path(), &sb, 3, free_port());
        let out = payrun(dir.path(), &sb, &RUN).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{api}: {err}");
        assert!(
            err.contains(&format!("api.{api}.payonic.com")) && err.contains("No response received"),
            "{api}: the refusal names the API and Payonic's message: {err}"
        );
        assert_eq!(
            sb.requests("POST /payonic/api/{paymentid}/refund 200"),
            0,
            "{api}: nothing was sent: {}",
            sb.counters()
        );
        assert!(sb.ledger().0.is_empty(), "{api}: no money moved");
    }
}

#[test]
fn notifications_to_a_public_url_with_a_path_are_taken_whether_the_proxy_keeps_or_strips_the_path()
{
    let port = free_port();
    // Notifications 30 provider minutes (1.8 s here) after each refund, well before the first
    // lookup (an hour, 3.6 s): only a notification that reached the listener settles a refund.
    let sb = sandbox_with_payments(5, &[], "30m");
    let dir = tempfile::tempdir().unwrap();
    refunds(dir.path(), &sb, 5, port);
    // payrun gives Payonic http://127.0.0.1:<port>/payrun/payonic/notify/<token>, and the
    // sandbox posts there: a proxy that forwards the path as it is.
    let manifest = dir.path().join("manifest.yaml");
    let text = std::fs::read_to_string(&manifest).unwrap().replace(
        &format!("  public_url: http://127.0.0.1:{port}\n"),
        &format!("  public_url: http://127.0.0.1:{port}/payrun\n  deadline: 1h\n"),
    );
    assert!(text.contains("/payrun\n"), "{text}");
    std::fs::write(&manifest, text).unwrap();
    let mut run = Killed(payrun(dir.path(), &sb, &RUN).spawn().unwrap());
    let token = token(&sb, "refunds-test");
    let (kept, stripped) = (
        format!("/payrun/payonic/notify/{token}"),
        format!("/payonic/notify/{token}"),
    );
    // A life cycle update (acknowledged, of no consequence) reaches the listener either way.
    let life_cycle =
        serde_json::json!({"paymentid": "rf00000001", "merchantpaymentid": "rf00000001"});
    assert!(
        eventually(Duration::from_secs(10), || post(port, &kept, &life_cycle)
            == Some(200)),
        "the path as given in public_url is served"
    );
    assert_eq!(
        post(port, &stripped, &life_cycle),
        Some(200),
        "and without its prefix"
    );
    assert_eq!(
        post(port, "/payrun/payonic/notify/not-the-token", &life_cycle),
        Some(404),
        "the token is still checked under the prefix"
    );
    // A refund's outcome through a proxy that strips the prefix, then the same notification
    // the other way: taken once, the copy recognised.
    let (item, rid, payment) = a_waiting_refund(dir.path(), &sb).expect("a refund waits");
    assert_eq!(payment, item);
    let genuine = serde_json::json!({"responseid": rid, "paymentid": payment, "responsecode": "00", "authorizationcode": "654321", "status": "approved"});
    assert_eq!(post(port, &stripped, &genuine), Some(200));
    assert_eq!(post(port, &kept, &genuine), Some(200));
    let status = run.0.wait().unwrap();
    let out = run
        .0
        .stdout
        .take()
        .map(std::io::read_to_string)
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(out.contains("1 duplicates, 0 rejected"), "{out}");
    let rows = report(dir.path(), &sb);
    assert!(rows.iter().all(|r| &r[2] == "paid"), "{rows:?}");
    each_paid_once(&sb, 5);
    assert_eq!(
        sb.requests("GET /payonic/api/{paymentid}/payment 200"),
        0,
        "every refund was settled by its notification, none looked up: {}",
        sb.counters()
    );
}
