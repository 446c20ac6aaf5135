//! Regressions from payrun tried end to end as a user and an operations engineer would (issue
//! "Trust first"): each test is named after what broke.

mod support;

use std::os::fd::{FromRawFd, OwnedFd};
use std::process::Stdio;
use std::time::Duration;
use support::run::*;
use support::wire::Proxy;

/// A pipe as two owned ends (read, write).
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: a two-element array for pipe(2); both descriptors are owned from here on.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: fresh descriptors nobody else owns.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// What stdout and stderr of the run are.
enum Pipe {
    /// Its reader is gone (`payrun run … 2>&1 | head -2`, after head exited).
    Closed,
    /// Its reader never reads, and it is already full.
    Full,
}

#[test]
fn ctrl_c_and_sigterm_stop_a_run_whose_stderr_is_a_closed_or_a_full_pipe() {
    for (sig, pipe_kind) in [
        (libc::SIGINT, Pipe::Closed),
        (libc::SIGTERM, Pipe::Closed),
        (libc::SIGINT, Pipe::Full),
        (libc::SIGTERM, Pipe::Full),
    ] {
        let sandbox = sandbox().start();
        // Slow enough to be stopped half-way: one item per request, 40 requests a second.
        let batch = Batch::payroll_of(&sandbox, 400).limits(40, 1, 1, 1);
        let (read, write) = pipe();
        let keep_reader = match pipe_kind {
            Pipe::Closed => {
                drop(read);
                None
            }
            Pipe::Full => {
                // Fill it to the brim (64 KiB on Linux) before payrun writes anything.
                let mut w = std::fs::File::from(write.try_clone().unwrap());
                // SAFETY: F_SETFL on a descriptor this test owns (a dup of the write end).
                unsafe {
                    let fd = std::os::fd::AsRawFd::as_raw_fd(&w);
                    libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK);
                }
                let chunk = [b'#'; 4096];
                while std::io::Write::write(&mut w, &chunk).is_ok() {}
                Some(read)
            }
        };
        let mut run = batch
            .run()
            .spawn_into(Stdio::from(write.try_clone().unwrap()), Stdio::from(write));
        assert!(
            eventually(Duration::from_secs(20), || sandbox.ledger().len() >= 5),
            "the run pays while nobody reads its output"
        );
        run.signal(sig);
        let status = run
            .wait_at_most(Duration::from_secs(20))
            .expect("the run stops on the signal although its output goes nowhere");
        assert_eq!(status.code(), Some(130), "signal {sig}: {status}");
        // Stopped for good: nothing more is paid, and the state was committed.
        let paid = sandbox.ledger().len();
        assert!(paid < 400, "it stopped before the end");
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(sandbox.ledger().len(), paid);
        let status = batch.status();
        assert_eq!(
            status["states"]["sending"].as_u64().unwrap_or(0),
            0,
            "{status}"
        );
        drop(keep_reader);
    }
}

/// Rewrites the batch's CSV: `edit` gets every data row (id first) and may change or add rows.
fn edit_rows(batch: &Batch, edit: impl FnOnce(&mut Vec<Vec<String>>)) {
    let path = batch.dir.path().join("employees.csv");
    let mut r = csv::Reader::from_path(&path).unwrap();
    let header: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
    let mut rows: Vec<Vec<String>> = r
        .records()
        .map(|x| x.unwrap().iter().map(String::from).collect())
        .collect();
    edit(&mut rows);
    let mut w = csv::Writer::from_path(&path).unwrap();
    w.write_record(&header).unwrap();
    for row in rows {
        w.write_record(&row).unwrap();
    }
    w.flush().unwrap();
}

/// Stops a run with Ctrl-C once the provider has paid `paid` items.
fn interrupt_after(sandbox: &Sandbox, batch: &Batch, paid: usize) {
    let mut run = batch.run().spawn();
    assert!(
        eventually(Duration::from_secs(20), || sandbox.ledger().len() >= paid),
        "{}",
        run.log_tail()
    );
    run.signal(libc::SIGINT);
    let status = run.wait();
    assert_eq!(status.code(), Some(130), "{}", run.log_tail());
}

#[test]
fn a_resume_refuses_rows_that_changed_or_appeared_after_the_batch_started() {
    let sandbox = sandbox().start();
    let batch = Batch::payroll_of(&sandbox, 300).limits(100, 1, 1, 1);
    interrupt_after(&sandbox, &batch, 20);
    let paid = sandbox.ledger().len();
    let original = std::fs::read(batch.dir.path().join("employees.csv")).unwrap();
    // The last row is unsent: its amount changes; and a row is added.
    edit_rows(&batch, |rows| {
        rows.last_mut().unwrap()[9] = "99999.99".into();
        let mut new = rows[0].clone();
        new[0] = "NEW01".into();
        rows.push(new);
    });
    let resume = batch.resume().exits_with(1);
    let said = resume.log();
    let line_of = |id: &str| {
        said.lines()
            .find(|l| l.contains(&format!("item {id} ")))
            .unwrap_or_else(|| panic!("{id} is named:\n{said}"))
            .to_string()
    };
    assert!(line_of("X00300").contains("employees.csv:") && line_of("X00300").contains("changed"));
    assert!(
        line_of("NEW01").contains("employees.csv:")
            && line_of("NEW01").contains("not in the batch")
    );
    assert!(
        said.contains("nothing was sent") && said.contains("new batch"),
        "{said}"
    );
    assert_eq!(sandbox.ledger().len(), paid, "nothing was sent");
    // A removed row is refused as well.
    std::fs::write(batch.dir.path().join("employees.csv"), &original).unwrap();
    edit_rows(&batch, |rows| {
        rows.pop();
    });
    let said = batch.resume().exits_with(1).log();
    assert!(said.contains("is gone"), "{said}");
    // So is a changed flow (what every item sends).
    std::fs::write(batch.dir.path().join("employees.csv"), &original).unwrap();
    let batch = batch.edit("name: ACME Europe GmbH", "name: ACME Holdings Ltd");
    let said = batch.resume().exits_with(1).log();
    assert!(said.contains("error[run.changed-flow]"), "{said}");
    assert_eq!(sandbox.ledger().len(), paid, "nothing was sent");
    // Restored as it was, the batch finishes, each item paid once.
    let batch = batch.edit("name: ACME Holdings Ltd", "name: ACME Europe GmbH");
    batch.resume().succeeds();
    let ledger = sandbox.ledger();
    assert_eq!(ledger.len(), 300);
    assert!(ledger.paid_twice().is_empty());
    // `status` counts the batch's items, touched or not.
    assert_eq!(batch.status()["items"].as_u64(), Some(300));
}

#[test]
fn a_run_killed_in_its_first_milliseconds_never_bricks_the_batch() {
    let sandbox = sandbox().start();
    // At named instants of starting a batch: lock written, store being created, store in place.
    for point in ["lock-written", "store-create", "store-created"] {
        let batch = Batch::payroll(&sandbox)
            .named(&format!("early-{point}"))
            .packs_of(10);
        batch.run().env("PAYRUN_CRASH_AT", point).dies_by_sigkill();
        if point == "store-created" {
            let s = batch
                .try_status()
                .expect("a store in place is a started batch");
            assert_eq!(s["items"].as_u64(), Some(50), "{s}");
            batch.resume().succeeds();
        } else {
            assert!(batch.try_status().is_none(), "no batch started");
            batch.run().succeeds();
        }
    }
    // And at whatever instant a real kill lands in the first 60 ms, 20 times over.
    // At 100 requests a second: after many early kills every item may be in doubt, and each
    // is looked up on its own (the example's 5 a second would make that 10 s and more).
    let batch = Batch::payroll(&sandbox).named("early-kills").packs_of(10);
    let store = batch.dir.path().join("state/early-kills.redb");
    for i in 0..20u64 {
        let mut run = batch.run().spawn();
        std::thread::sleep(Duration::from_millis(5 + (i * 37) % 56));
        run.signal(libc::SIGKILL);
        run.wait();
        // Whatever was left, `status` reads it (a store exists only once the batch started).
        if store.exists() {
            let s = batch.try_status().expect("a store in place can be read");
            assert_eq!(s["items"].as_u64(), Some(50), "{s}");
        }
    }
    batch.run().succeeds();
    // A store left half-created by an older payrun is recognised and set aside.
    let legacy = Batch::payroll(&sandbox).named("legacy-batch");
    std::fs::create_dir_all(legacy.dir.path().join("state")).unwrap();
    std::fs::write(
        legacy.dir.path().join("state/legacy-batch.redb"),
        [0u8; 512],
    )
    .unwrap();
    let said = legacy.run().succeeds().log();
    assert!(said.contains("left unfinished"), "{said}");
    let ledger = sandbox.ledger();
    assert!(ledger.paid_twice().is_empty(), "{:?}", ledger.paid_twice());
    assert_eq!(ledger.len(), 5 * 50, "50 items of each of the five batches");
}

/// Posts a TransactionStatusUpdate webhook signed with the outbound key (MD5 of body + key, as
/// the document says); returns the HTTP status payrun answered.
fn post_signed_webhook(port: u16, outbound_key: &str, body: &serde_json::Value) -> u16 {
    use md5::{Digest, Md5};
    let body = body.to_string();
    let signature = payrun::keys::hex_lower(
        &Md5::new()
            .chain_update(body.as_bytes())
            .chain_update(outbound_key.as_bytes())
            .finalize(),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        reqwest::Client::new()
            .post(format!("http://127.0.0.1:{port}/paysend/webhook"))
            .header("content-type", "application/json")
            .header("X-OPP-Signature", signature)
            .body(body)
            .send()
            .await
            .expect("payrun's listener answers")
            .status()
            .as_u16()
    })
}

fn webhook(key: &str, status: &str, code: &str, description: &str) -> serde_json::Value {
    serde_json::json!({
        "webhookType": "TransactionStatusUpdate",
        "invoiceId": key,
        "transactionId": "5d8149f7-9dd5-4784-9f25-3da3215b8a7a",
        "status": status,
        "statusDateTime": "2026-12-01T10:00:00.000+00:00",
        "errorCode": code,
        "errorDescription": description,
        "rrn": null, "arn": null, "traceId": null
    })
}

#[test]
fn a_signed_webhook_about_an_unsent_item_is_refused_and_a_decline_after_payment_is_a_reversal() {
    let port = free_port();
    let sandbox = sandbox().start();
    let batch = Batch::payroll_of(&sandbox, 60)
        .limits(20, 1, 1, 1)
        .webhooks_on(port);
    let mut run = batch.run().spawn();
    assert!(
        eventually(Duration::from_secs(20), || sandbox.ledger().len() >= 3),
        "{}",
        run.log_tail()
    );
    let key_of = |id: &str| payrun::keys::item_key(&batch.id, id);
    // "Completed" and "Declined" for items not sent yet: refused, nothing changes.
    for (id, status, code) in [("X00060", "Completed", "0"), ("X00059", "Declined", "4006")] {
        let answer = post_signed_webhook(
            port,
            &sandbox.outbound_key,
            &webhook(&key_of(id), status, code, ""),
        );
        assert_eq!(answer, 422, "an outcome for unsent item {id} is refused");
    }
    // "4008: money will be refunded" after an item payrun recorded as paid: money moving back.
    let mut paid_key = String::new();
    assert!(eventually(Duration::from_secs(20), || {
        let report = batch.report();
        match report.rows.iter().find(|r| r.state() == "paid") {
            Some(r) => {
                paid_key = r.key().to_string();
                true
            }
            None => false,
        }
    }));
    let answer = post_signed_webhook(
        port,
        &sandbox.outbound_key,
        &webhook(
            &paid_key,
            "Declined",
            "4008",
            "Account owner refused incoming money transfer.",
        ),
    );
    assert_eq!(answer, 200);
    let status = run.wait();
    assert_eq!(
        status.code(),
        Some(4),
        "a reversal needs attention\n{}",
        run.log_tail()
    );
    let report = batch.report();
    let reversed: Vec<_> = report
        .rows
        .iter()
        .filter(|r| r.state() == "reversed")
        .collect();
    assert_eq!(reversed.len(), 1, "{:?}", report.states());
    assert_eq!(reversed[0].key(), paid_key);
    assert_eq!(reversed[0].code(), "4008");
    // The unsent items were paid by their own requests, once, when their turn came.
    let ledger = sandbox.ledger();
    assert_eq!(ledger.len(), 60);
    assert!(ledger.paid_twice().is_empty());
    assert_eq!(report.row("X00060").state(), "paid");
    assert_eq!(report.row("X00059").state(), "paid");
    let view = batch.status();
    assert_eq!(view["states"]["reversed"].as_u64(), Some(1), "{view}");
}

#[test]
fn a_currency_the_balance_preflight_does_not_report_is_refused_before_anything_is_sent() {
    // The sandbox keeps EUR, GBP, USD, CHF, JPY and KWD balances: no PLN.
    let sandbox = sandbox().start();
    let batch = Batch::payroll(&sandbox);
    edit_rows(&batch, |rows| {
        for row in rows.iter_mut().take(6) {
            row[10] = "PLN".into();
        }
    });
    let said = batch.run().exits_with(1).log();
    assert!(
        said.contains("PLN: the provider reports no PLN balance"),
        "{said}"
    );
    assert!(said.contains("available: "), "{said}");
    assert!(said.contains("nothing was sent"), "{said}");
    assert!(sandbox.ledger().is_empty());
}

#[test]
fn time_scale_is_refused_against_anything_but_a_sandbox() {
    let sandbox = sandbox().start();
    // A real provider's URL: refused before any request (no traffic leaves this machine).
    let batch = Batch::payroll(&sandbox).environment("https://api.provider.example/paysend");
    let said = batch.run().exits_with(2).log();
    assert!(said.contains("error[run.time-scale]"), "{said}");
    // A server on this machine that is not a payrun sandbox.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in listener.incoming().take(4).flatten() {
            let mut s = s;
            let mut buf = [0u8; 4096];
            let _ = std::io::Read::read(&mut s, &mut buf);
            let _ = std::io::Write::write_all(
                &mut s,
                b"HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\nconnection: close\r\n\r\nnot found",
            );
        }
    });
    let batch = Batch::payroll(&sandbox).environment(&format!("http://127.0.0.1:{port}/paysend"));
    let said = batch.run().exits_with(2).log();
    assert!(
        said.contains("did not answer as a payrun sandbox"),
        "{said}"
    );
    // The sandbox itself: fine.
    Batch::payroll(&sandbox).run().succeeds();
}

#[test]
fn a_pack_sent_again_is_a_replay_with_the_date_it_first_carried() {
    // The provider takes 10 requests a second; payrun offers 100: refused packs ("busy", not
    // processed) are sent again. Paysend's idempotency is header.request.id and
    // header.request.date together.
    let sandbox = sandbox()
        .paysend("rate_limit: {requests_per_second: 10, burst: 2}")
        .start();
    let proxy = Proxy::to(&sandbox.root);
    let batch = Batch::payroll(&sandbox)
        .packs_of(5)
        .environment(&format!("{}/paysend", proxy.root));
    batch.run().succeeds();
    let mut by_id: std::collections::BTreeMap<String, Vec<serde_json::Value>> = Default::default();
    for e in proxy.exchanges().into_iter().filter(|e| e.is_payout()) {
        let id = e.request["header"]["request"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        by_id.entry(id).or_default().push(e.request);
    }
    let resent: Vec<_> = by_id.values().filter(|v| v.len() > 1).collect();
    assert!(!resent.is_empty(), "some pack was sent again");
    for copies in resent {
        for c in copies {
            assert_eq!(
                c["header"]["request"]["date"], copies[0]["header"]["request"]["date"],
                "a pack sent again carries the date it first carried"
            );
            assert_eq!(c, &copies[0], "a pack sent again is the same request");
        }
    }
    assert!(sandbox.ledger().paid_twice().is_empty());
    assert_eq!(sandbox.ledger().len(), 50);
}

/// The payroll example without its getBalance preflight (items are the first requests).
fn payroll_without_preflight(sandbox: &Sandbox) -> Batch {
    Batch::payroll(sandbox).edit(
        "preflight:\n  - id: balance\n    op: getBalance\n    payload: {}\n",
        "",
    )
}

#[test]
fn a_wrong_base_url_stops_the_run_saying_why_and_fails_no_item() {
    let sandbox = sandbox().start();
    // The path prefix forgotten: the server answers 404 without a Paysend body.
    let batch = payroll_without_preflight(&sandbox).environment(&sandbox.root);
    let said = batch.run().exits_with(2).log();
    assert!(said.contains("error[run.transport]"), "{said}");
    assert!(said.contains("404 from"), "{said}");
    assert!(said.contains("without a Paysend"), "{said}");
    assert!(said.contains("is the base URL right"), "{said}");
    assert!(said.contains("payrun resume"), "{said}");
    let status = batch.status();
    for state in ["failed", "needs_review", "paid", "reversed"] {
        assert_eq!(status["states"][state].as_u64().unwrap_or(0), 0, "{status}");
    }
    assert!(sandbox.ledger().is_empty());
    // Put right, the batch resumes and every item is paid once.
    let batch = batch.environment(&sandbox.base);
    batch.resume().succeeds();
    let ledger = sandbox.ledger();
    assert_eq!(ledger.len(), 50);
    assert!(ledger.paid_twice().is_empty());
    // The same mistake caught by the preflight: refused before any item, in words.
    let batch = Batch::payroll(&sandbox)
        .named("with-preflight")
        .environment(&sandbox.root);
    let said = batch.run().exits_with(2).log();
    assert!(
        said.contains("error[run.transport]") && said.contains("is the base URL right"),
        "{said}"
    );
}

#[test]
fn an_unreachable_provider_stops_the_run_with_the_connection_error_in_words() {
    let sandbox = sandbox().start();
    let closed = free_port();
    let batch = payroll_without_preflight(&sandbox)
        .environment(&format!("http://127.0.0.1:{closed}/paysend"));
    let said = batch.run_in_real_time().exits_with(2).log();
    assert!(said.contains("error[run.transport]"), "{said}");
    assert!(said.contains("connection refused"), "{said}");
    assert!(
        said.contains("retrying"),
        "the progress said what fails: {said}"
    );
    let status = batch.status();
    assert_eq!(
        status["states"]["failed"].as_u64().unwrap_or(0),
        0,
        "{status}"
    );
    assert_eq!(status["items"].as_u64(), Some(50));
}

#[test]
fn a_deliberate_change_of_unsent_rows_is_accepted_only_with_a_reason_that_status_and_report_show() {
    let sandbox = sandbox().start();
    let batch = Batch::payroll_of(&sandbox, 200).limits(100, 1, 1, 1);
    interrupt_after(&sandbox, &batch, 20);
    let original = std::fs::read(batch.dir.path().join("employees.csv")).unwrap();
    // A paid row cannot be accepted as changed: that would be a second payment.
    edit_rows(&batch, |rows| rows[0][9] = "1.00".into());
    let said = batch
        .resume()
        .arg("--accept-changes")
        .arg("typo")
        .exits_with(1)
        .log();
    assert!(
        said.contains("was already sent with its old content"),
        "{said}"
    );
    // Unsent rows changed in place and a row added at the end: accepted, with the reason.
    std::fs::write(batch.dir.path().join("employees.csv"), &original).unwrap();
    edit_rows(&batch, |rows| {
        rows.last_mut().unwrap()[9] = "4321.00".into();
        let mut new = rows[1].clone();
        new[0] = "NEW01".into();
        rows.push(new);
    });
    let said = batch
        .resume()
        .arg("--accept-changes")
        .arg("HR ticket 42: corrected net pay")
        .succeeds()
        .log();
    assert!(said.contains("accepted changes"), "{said}");
    let ledger = sandbox.ledger();
    assert_eq!(ledger.len(), 201);
    assert!(ledger.paid_twice().is_empty());
    let changed = payrun::keys::item_key(&batch.id, "X00200");
    let paid = ledger.for_key(&changed);
    assert_eq!(paid.len(), 1);
    assert_eq!(
        decimal(paid[0]["amount"].as_str().unwrap()),
        decimal("4321.00"),
        "{:?}",
        paid[0]
    );
    let status = batch.status();
    let accepted = status["accepted_changes"]
        .as_array()
        .expect("status lists them");
    assert_eq!(accepted.len(), 2, "{status}");
    assert!(
        accepted
            .iter()
            .all(|a| a.as_str().unwrap().contains("HR ticket 42"))
    );
    let report = batch.report();
    assert!(
        report
            .row("X00200")
            .get("accepted_change")
            .contains("HR ticket 42")
    );
    assert!(
        report
            .row("NEW01")
            .get("accepted_change")
            .contains("HR ticket 42")
    );
    assert_eq!(report.row("X00001").get("accepted_change"), "");
}
