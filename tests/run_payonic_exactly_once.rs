//! Payonic gives no idempotency key: a money-moving request that may have been processed is in
//! doubt until Payonic itself says otherwise, and is never sent again on a guess. Each test is
//! one hole an independent Payonic implementation found, run against `payrun sandbox` with the
//! fault that shows it, and judged by the sandbox's ledger (every operation exactly once).

mod support;

use serde_json::json;
use std::time::Duration;
use support::payonic::*;
use support::run::*;

fn all_paid(dir: &std::path::Path, sb: &Sandbox) {
    let rows = report(dir, sb);
    assert!(rows.iter().all(|r| &r[2] == "paid"), "{rows:?}");
}

/// Sets `notifications.<line>` in the batch's manifest.
fn notifications(dir: &std::path::Path, line: &str) {
    let manifest = dir.join("manifest.yaml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let text = text.replace("notifications:\n", &format!("notifications:\n  {line}\n"));
    std::fs::write(&manifest, text).unwrap();
}

#[test]
fn a_5xx_after_payonic_did_the_work_is_settled_through_the_payment_api_never_sent_again() {
    // Every refund and every payout is made, then answered 504.
    for payouts_too in [false, true] {
        let sb = sandbox_with_payments(10, &["error_5xx_after_commit_rate=1.0"], "1m");
        let dir = tempfile::tempdir().unwrap();
        match payouts_too {
            false => refunds(dir.path(), &sb, 10, free_port()),
            true => payouts(dir.path(), &sb, 10, free_port()),
        }
        succeeds(payrun(dir.path(), &sb, &RUN));
        all_paid(dir.path(), &sb);
        each_paid_once(&sb, 10);
        let c = sb.counters();
        assert!(
            c["error_5xx_after_commit"].as_u64().unwrap_or(0) > 0,
            "the sandbox answered 504 after the work: {c}"
        );
        assert_eq!(
            c["events"]["payonic.trace_reused"].as_u64().unwrap_or(0),
            0,
            "every request has its own TraceApi (L29): {c}"
        );
    }
}

#[test]
fn not_listed_soon_after_a_lost_answer_is_not_trusted_so_nothing_is_paid_twice() {
    // Refunds processed 5 provider minutes after their request, payouts listed 5 minutes after
    // theirs; a third of the answers are lost. A lookup 5 s later finds nothing listed — which proves
    // nothing before the settle window (10 minutes by default).
    for payouts_too in [false, true] {
        let sb = sandbox_with(
            8,
            &["drop_after_commit_rate=0.3"],
            "5m",
            &["listing_delay: 5m"],
        );
        let dir = tempfile::tempdir().unwrap();
        match payouts_too {
            false => refunds(dir.path(), &sb, 8, free_port()),
            true => payouts(dir.path(), &sb, 8, free_port()),
        }
        succeeds(payrun(dir.path(), &sb, &RUN));
        all_paid(dir.path(), &sb);
        each_paid_once(&sb, 8);
    }
}

#[test]
fn the_settle_window_is_the_batchs_to_choose() {
    // Processed 20 provider minutes after the request: beyond the default window, so this
    // batch sets a longer one.
    let sb = sandbox_with(6, &["drop_after_commit_rate=0.3"], "20m", &[]);
    let dir = tempfile::tempdir().unwrap();
    refunds(dir.path(), &sb, 6, free_port());
    notifications(dir.path(), "settle: 40m");
    succeeds(payrun(dir.path(), &sb, &RUN));
    all_paid(dir.path(), &sb);
    each_paid_once(&sb, 6);
}

#[test]
fn a_request_payonic_never_took_is_sent_again_only_once_two_lookups_after_the_window_miss_it() {
    // A quarter of the requests are answered 500 before anything is done.
    let sb = sandbox_with_payments(12, &["error_5xx_rate=0.25"], "1m");
    let dir = tempfile::tempdir().unwrap();
    refunds(dir.path(), &sb, 12, free_port());
    notifications(dir.path(), "settle: 3m");
    let out = payrun(dir.path(), &sb, &RUN).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{:?}",
        String::from_utf8_lossy(&out.stderr),
        report(dir.path(), &sb)
    );
    all_paid(dir.path(), &sb);
    each_paid_once(&sb, 12);
    assert!(
        sb.requests("POST /payonic/api/{paymentid}/refund 500") > 0,
        "some refunds were refused: {}",
        sb.counters()
    );
}

#[test]
fn pending_statuses_and_a_numeric_responsecode_are_not_failures() {
    let sb = sandbox_with(
        12,
        &["drop_after_commit_rate=0.3", "webhook_drop_rate=0.2"],
        "2m",
        &[
            "pending_notifications: true",
            "pending_listings: true",
            "numeric_responsecode: true",
            "listing_delay: 1m",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    refunds(dir.path(), &sb, 12, free_port());
    // A fifth of the Payment API's answers are lost too: enough lookups that every refund is
    // heard of on a loaded machine.
    notifications(dir.path(), "lookups: 12");
    succeeds(payrun(dir.path(), &sb, &RUN));
    all_paid(dir.path(), &sb);
    each_paid_once(&sb, 12);
}

#[test]
fn a_forged_decline_of_the_last_waiting_item_neither_fails_it_nor_ends_the_run() {
    let port = free_port();
    // The sandbox's own notification comes 30 provider minutes (1.8 s) after the request.
    let sb = sandbox_with_payments(1, &[], "30m");
    let dir = tempfile::tempdir().unwrap();
    refunds(dir.path(), &sb, 1, port);
    let mut run = Killed(payrun(dir.path(), &sb, &RUN).spawn().unwrap());
    let url = format!("/payonic/notify/{}", token(&sb, "refunds-test"));
    assert!(
        eventually(Duration::from_secs(10), || {
            post(port, "/payonic/notify/not-the-token", &json!({})) == Some(404)
        }),
        "payrun listens"
    );
    let mut row = None;
    assert!(
        eventually(Duration::from_secs(10), || {
            row = report(dir.path(), &sb)
                .into_iter()
                .find(|r| !r[17].is_empty());
            row.is_some()
        }),
        "the refund was accepted"
    );
    let row = row.unwrap();
    let (rid, payment) = row[17].split_once('@').unwrap();
    // The forgery: a Payment API answer naming the item's key, posted by someone who
    // knows the batch and item ids. It answers no lookup of payrun's: held, never taken.
    let key = row[10].replace('-', "");
    let listing = json!({"operations": [{"note": key, "responsecode": "00"}]});
    assert_eq!(post(port, &url, &listing), Some(202));
    // A decline carrying the real responseid: nothing tells it from Payonic's, so it is
    // confirmed through the Payment API before it counts — which lists the refund approved.
    let forged = json!({"responseid": rid, "paymentid": payment, "responsecode": "51", "status": "declined"});
    assert_eq!(post(port, &url, &forged), Some(200));
    let status = run.0.wait().unwrap();
    let said = std::io::read_to_string(run.0.stdout.take().unwrap()).unwrap();
    assert_eq!(status.code(), Some(0), "{said}");
    assert!(said.contains(" 1 rejected"), "the forged listing: {said}");
    all_paid(dir.path(), &sb);
    each_paid_once(&sb, 1);
}

#[test]
fn the_note_payonic_lists_is_keyed_with_the_batchs_secret_and_a_resume_without_it_sends_nothing() {
    let sb = sandbox_with_payments(3, &[], "1m");
    let dir = tempfile::tempdir().unwrap();
    refunds(dir.path(), &sb, 3, free_port());
    let out = payrun(dir.path(), &sb, &RUN)
        .env("PAYRUN_CRASH_AT", "after-send:2")
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(9), "killed at the second send");
    let secret_file = dir.path().join("state/refunds-test.secret");
    let secret = std::fs::read_to_string(&secret_file).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&secret_file)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the secret is its owner's only");
    }
    // Two refunds reached Payonic before the kill; which two depends on the race between
    // the three requests in flight.
    let (row, refund) = report(dir.path(), &sb)
        .into_iter()
        .find_map(|row| {
            let listed = payment_listing(&sb, &row[0]);
            let refund = listed["operations"]
                .as_array()?
                .iter()
                .find(|o| o["operationtype"] == "refund")
                .cloned()?;
            Some((row, refund))
        })
        .expect("a refund made before the kill is listed");
    let key = row[10].to_string();
    let note = refund["note"].as_str().unwrap();
    assert_ne!(
        note,
        key.replace('-', ""),
        "the key itself is not on the wire"
    );
    let expected = {
        let bytes: Vec<u8> = (0..64)
            .step_by(2)
            .map(|i| u8::from_str_radix(&secret.trim()[i..i + 2], 16).unwrap())
            .collect();
        let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &bytes);
        let tag = ring::hmac::sign(&k, key.as_bytes());
        tag.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    assert_eq!(
        note, expected,
        "HMAC-SHA256 of the item key under the secret"
    );
    // Without its secret the batch's operations cannot be recognised: nothing is sent.
    std::fs::remove_file(&secret_file).unwrap();
    let before = sb.ledger().len();
    let out = payrun(dir.path(), &sb, &RESUME).output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("secret") && said.contains("hint"), "{said}");
    assert!(!said.contains(secret.trim()), "never printed");
    assert_eq!(sb.ledger().len(), before, "nothing was sent");
    // Restored, the same secret finds the refund already made: each payment refunded once.
    std::fs::write(&secret_file, &secret).unwrap();
    succeeds(payrun(dir.path(), &sb, &RESUME));
    all_paid(dir.path(), &sb);
    each_paid_once(&sb, 3);
    let report = payrun(
        dir.path(),
        &sb,
        &["report", "refunds-test", "--state-dir", "state"],
    )
    .output()
    .unwrap();
    assert!(!String::from_utf8_lossy(&report.stdout).contains(secret.trim()));
}

#[test]
fn items_under_review_are_settled_by_a_resume_that_waits_for_the_payment_apis_answers() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    std::fs::write(
        dir.path().join("refunds.csv"),
        "payment,amount,currency\nrv00000001,12.50,DKK\nrv00000002,8.00,DKK\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("manifest.yaml"),
        format!(
            "batch: review-test\nprovider: payonic\nenvironment: sandbox\ncredentials:\n  api_key: PAYONIC_API_KEY\nitems:\n  source: refunds.csv\n  columns: {{id: payment, paymentid: payment, amount: amount, currency: currency}}\nflow:\n  - op: refund\n    payload:\n      paymentid: ${{item.paymentid}}\n      amount: ${{item.amount}}\n      currency: ${{item.currency}}\nnotifications:\n  listen: 127.0.0.1:{port}\n  public_url: http://127.0.0.1:{port}\n  deadline: 1m\n  lookups: 2\n"
        ),
    )
    .unwrap();
    // First every notification is lost (the refunds' and the Payment API's): the items end
    // under review. Then Payonic delivers again.
    let config = |drop: f64| {
        let p = dir.path().join(format!("sandbox-{drop}.yaml"));
        std::fs::write(
            &p,
            format!("payonic:\n  notify_delay_min: 20s\n  notify_delay_max: 20s\nfaults:\n  webhook_drop_rate: {drop}\n"),
        )
        .unwrap();
        p
    };
    let run = |args: &[&str], config: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_payrun"))
            .current_dir(dir.path())
            .args(args)
            .args(["--sandbox", "--sandbox-config"])
            .arg(config)
            .args(["--state-dir", "state", "--time-scale", "1000"])
            .env("PAYONIC_API_KEY", "any")
            .output()
            .unwrap()
    };
    let first = run(&["run", "manifest.yaml", "--yes"], &config(1.0));
    assert_eq!(
        first.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let second = run(&["resume", "review-test"], &config(0.0));
    assert_eq!(
        second.status.code(),
        Some(0),
        "the resume waited for the answers its lookups asked for: {}",
        String::from_utf8_lossy(&second.stderr)
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_payrun"))
        .current_dir(dir.path())
        .args(["sandbox", "ledger", "--state", "state/review-test.sandbox"])
        .output()
        .unwrap();
    let ledger = String::from_utf8_lossy(&out.stdout);
    assert!(ledger.contains("0 keys paid more than once"), "{ledger}");
}

#[test]
fn an_mit_is_matched_to_its_item_by_the_merchantpaymentid_of_the_payment_it_creates() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mits.csv"),
        "order,parent,amount,currency\no1,pay00000001,10.95,DKK\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("manifest.yaml"),
        "batch: mit-test\nprovider: payonic\nenvironment: sandbox\ncredentials:\n  api_key: PAYONIC_API_KEY\nitems:\n  source: mits.csv\n  columns: {id: order, parent: parent, amount: amount, currency: currency}\nflow:\n  - op: mit\n    payload:\n      merchantid: m1\n      paymentid: ${item.parent}\n      amount: ${item.amount}\n      currency: ${item.currency}\nnotifications:\n  listen: 127.0.0.1:9\n  public_url: https://payments.acme.example/payrun\n",
    )
    .unwrap();
    let validate = std::process::Command::new(env!("CARGO_BIN_EXE_payrun"))
        .current_dir(dir.path())
        .args(["validate", "manifest.yaml"])
        .output()
        .unwrap();
    assert_eq!(
        validate.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&validate.stderr)
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_payrun"))
        .current_dir(dir.path())
        .args([
            "run",
            "manifest.yaml",
            "--sandbox",
            "--yes",
            "--state-dir",
            "state",
        ])
        .env("PAYONIC_API_KEY", "any")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    // Its notification names the new payment, not the one the request named: matched by the
    // MIT's own merchantpaymentid (newmerchantpaymentid), so the item is paid, once.
    assert_eq!(out.status.code(), Some(0), "{said}");
    let ledger = std::process::Command::new(env!("CARGO_BIN_EXE_payrun"))
        .current_dir(dir.path())
        .args(["sandbox", "counters", "--state", "state/mit-test.sandbox"])
        .output()
        .unwrap();
    let counters: serde_json::Value = serde_json::from_slice(&ledger.stdout).unwrap();
    assert_eq!(
        counters["events"]["payonic.mit.replayed"]
            .as_u64()
            .unwrap_or(0),
        0,
        "{counters}"
    );
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_payrun"))
        .current_dir(dir.path())
        .args(["status", "mit-test", "--state-dir", "state"])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("states: done 1"), "{status}");
}
