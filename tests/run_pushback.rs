//! Provider pushback (issue 12): the manifest's `requests_per_second` is a ceiling, not a
//! promise. Against a provider enforcing 50 requests/s, a batch configured at 60 kept offering
//! 58/s and had 12.6% of its requests refused "Sorry. Can't accept your request now.". payrun
//! must slow down when the provider pushes back and recover gradually.

mod support;

use std::process::Stdio;
use support::run::*;

#[test]
fn a_batch_configured_above_the_providers_limit_slows_down_instead_of_being_refused() {
    // The sandbox takes 50 requests a second (submissions and status polls alike) and answers
    // the rest 404 "Sorry. Can't accept your request now." (L185); payrun is told it may send
    // 80. 150 single-item packs are ~300 requests: some 6 s at the provider's limit.
    let sandbox = sandbox()
        .paysend("rate_limit: {requests_per_second: 50, burst: 5}")
        .start();
    let items = 150;
    let batch = Batch::payroll_of(&sandbox, items).limits(80, 5, 8, 1);

    let out = batch.dir.path().join("run.out");
    let err = batch.dir.path().join("run.err");
    let mut run = batch.run().spawn_into(
        Stdio::from(std::fs::File::create(&out).unwrap()),
        Stdio::from(std::fs::File::create(&err).unwrap()),
    );
    let status = run.wait();
    let said = std::fs::read_to_string(&out).unwrap();
    let log = std::fs::read_to_string(&err).unwrap();
    assert_eq!(status.code(), Some(0), "{said}\n{log}");

    // Every item paid exactly once.
    batch.report().all_paid().agrees_with(&sandbox.ledger());
    assert_eq!(sandbox.ledger().len(), items);
    assert!(sandbox.ledger().paid_twice().is_empty());
    assert_eq!(sandbox.counters()["duplicates_refused"], 0);

    // Refused: a fixed 80/s would have a third of its requests refused (and their retries);
    // an adaptive pace only the few that find the limit again now and then.
    let counters = sandbox.counters();
    let requests: u64 = counters["requests"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|v| v.as_u64())
        .sum();
    let refused = counters["rate_limited"].as_u64().unwrap();
    let share = refused as f64 / requests as f64;
    eprintln!(
        "{refused} of {requests} requests refused ({:.1}%)",
        100.0 * share
    );
    assert!(
        share < 0.05,
        "{refused} of {requests} requests refused ({:.1}%)\n{said}\n{log}",
        100.0 * share
    );
    assert!(
        refused > 0,
        "the provider never pushed back: nothing was tested"
    );
    // The run says it was pushed back, and counts it in its closing line.
    assert!(
        said.lines().any(
            |l| l.contains(&format!("{items} items: {items} paid, 0 failed"))
                && l.contains("pushback")
        ),
        "{said}"
    );
}
