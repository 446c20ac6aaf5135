//! Answers lost after the provider paid (the in-doubt case) and Paysend's propagation delay:
//! an item whose answer was lost is looked up by its invoiceId — after the documented 3 minutes
//! (L633; 180 ms at 1000×), never before — and is only sent again when Paysend has no record
//! of it. The sandbox's ledger and counters, and a recording proxy in front of the sandbox,
//! are the judges.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;
use support::run::*;
use support::wire::{Exchange, Proxy};

#[test]
fn a_few_hundred_items_with_5_percent_of_answers_lost_after_paying_are_each_paid_exactly_once() {
    // Besides answers dropped after the payment (in doubt, and paid), some requests time out
    // before anything is processed (in doubt, and not paid) and some get a 500 (not paid).
    let sandbox = sandbox()
        .fault("drop_after_commit_rate=0.05")
        .fault("timeout_rate=0.02")
        .fault("timeout_after=50ms")
        .fault("error_5xx_rate=0.02")
        .start();
    let batch = Batch::payroll_of(&sandbox, 300).limits(300, 20, 4, 5);

    batch.run().succeeds();

    let report = batch.report();
    assert_eq!(report.rows.len(), 300, "no item lost");
    report.all_paid().agrees_with(&sandbox.ledger());
    assert_eq!(sandbox.ledger().len(), 300);
    let c = sandbox.counters();
    assert!(
        c["dropped_after_commit"].as_u64().unwrap() >= 3,
        "answers were lost: {c}"
    );
    assert_eq!(
        c["duplicates_refused"], 0,
        "a paid item was offered again: {c}"
    );
}

/// The proxy's log, split into payout submissions and lookups by invoiceId.
struct Wire {
    payouts: Vec<Exchange>,
    lookups: BTreeMap<String, Vec<Exchange>>,
}

impl Wire {
    fn of(proxy: &Proxy) -> Wire {
        let all = proxy.exchanges();
        let mut lookups: BTreeMap<String, Vec<Exchange>> = BTreeMap::new();
        for e in all.iter().filter(|e| e.is_lookup()) {
            lookups
                .entry(e.invoices()[0].to_string())
                .or_default()
                .push(e.clone());
        }
        for l in lookups.values_mut() {
            l.sort_by_key(|e| e.at);
        }
        Wire {
            payouts: all.into_iter().filter(Exchange::is_payout).collect(),
            lookups,
        }
    }

    /// How many payout requests named each invoiceId.
    fn offers(&self) -> BTreeMap<&str, usize> {
        let mut n = BTreeMap::new();
        for p in &self.payouts {
            for i in p.invoices() {
                *n.entry(i).or_default() += 1;
            }
        }
        n
    }
}

#[test]
fn after_a_lost_answer_the_runner_looks_up_only_once_the_propagation_delay_has_passed() {
    let sandbox = sandbox().fault("drop_after_commit_rate=0.4").start();
    let proxy = Proxy::to(&sandbox.root);
    let batch = Batch::payroll(&sandbox)
        .packs_of(2)
        .environment(&format!("{}/paysend", proxy.root));

    batch.run().succeeds();

    batch.report().all_paid().agrees_with(&sandbox.ledger());
    let wire = Wire::of(&proxy);
    let lost: Vec<&Exchange> = wire.payouts.iter().filter(|e| e.status.is_none()).collect();
    assert!(lost.len() >= 3, "answers were lost: {}", lost.len());
    for dropped in lost {
        for invoice in dropped.invoices() {
            let asked = wire
                .lookups
                .get(invoice)
                .unwrap_or_else(|| panic!("{invoice} (answer lost) was never looked up"));
            let waited = asked[0].at.duration_since(dropped.done);
            assert!(
                waited + Duration::from_millis(2) >= PROPAGATION,
                "{invoice} was looked up {waited:?} after its answer was lost, before the propagation delay"
            );
        }
    }
    // Waiting out the delay, no lookup met "not found" (3006), so nothing was offered again.
    for (invoice, asked) in &wire.lookups {
        for a in asked.iter().filter(|a| a.status.is_some()) {
            assert_ne!(a.first_code(), Some(3006), "{invoice}: {}", a.response);
        }
    }
    for (invoice, n) in wire.offers() {
        assert_eq!(n, 1, "{invoice} was offered {n} times");
    }
    // (The getBalance preflight is asked again with the same request id when its answer is
    // lost — a replay, and harmless: it only reads.)
    let c = sandbox.counters();
    assert_eq!(c["duplicates_refused"], 0, "{c}");
}

#[test]
fn a_lost_answer_for_a_request_that_never_arrived_is_sent_again_after_the_lookup_finds_nothing() {
    // Timeouts: the sandbox holds the connection and closes it having processed nothing. The
    // runner cannot tell this from a lost answer: it waits, looks up, meets 3006 — now meaning
    // "never arrived" — and sends again with the same invoiceId.
    let sandbox = sandbox()
        .fault("timeout_rate=0.3")
        .fault("timeout_after=20ms")
        .start();
    let proxy = Proxy::to(&sandbox.root);
    let batch = Batch::payroll(&sandbox)
        .packs_of(2)
        .environment(&format!("{}/paysend", proxy.root));

    batch.run().succeeds();

    batch.report().all_paid().agrees_with(&sandbox.ledger());
    assert_eq!(sandbox.ledger().len(), 50);
    let wire = Wire::of(&proxy);
    let offers = wire.offers();
    let resent: Vec<&&str> = offers
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(i, _)| i)
        .collect();
    assert!(
        !resent.is_empty(),
        "some requests timed out and were sent again"
    );
    for invoice in resent {
        let first_lost = wire
            .payouts
            .iter()
            .find(|p| p.invoices().contains(invoice))
            .unwrap();
        let asked = &wire.lookups[*invoice];
        assert!(
            asked[0].at.duration_since(first_lost.done) + Duration::from_millis(2) >= PROPAGATION,
            "{invoice}: looked up before the propagation delay"
        );
        assert_eq!(
            asked[0].first_code(),
            Some(3006),
            "{invoice}: {}",
            asked[0].response
        );
        let again = wire
            .payouts
            .iter()
            .filter(|p| p.invoices().contains(invoice))
            .nth(1)
            .unwrap();
        assert!(
            again.at > asked[0].done,
            "{invoice}: sent again only after the lookup"
        );
    }
    assert_eq!(sandbox.counters()["duplicates_refused"], 0);
}

#[test]
fn a_provider_slower_than_its_documented_propagation_delay_still_pays_nobody_twice() {
    // The sandbox needs 6 provider minutes before task.statusGet finds a payment; payrun trusts
    // the document's 3 and takes "not found" after that for "never arrived", so it sends the
    // items whose answers the proxy lost again, with the same invoiceIds: Paysend refuses them
    // (3011) or replays the first answer, and nobody is paid twice. (Requests finish at once
    // here, so a 3011 comes in the answer itself; for one that comes later, in the request's
    // status, see run_error_codes.rs.)
    let sandbox = sandbox()
        .paysend("propagation_delay: 6m")
        .paysend("accept_time: 0s")
        .paysend("level_time: 0s")
        .start();
    let proxy = Proxy::spec(&sandbox.root).dropping_answers(5, 25).start();
    let batch = Batch::payroll(&sandbox)
        .packs_of(2)
        .environment(&format!("{}/paysend", proxy.root));

    batch.run().succeeds();

    batch.report().all_paid();
    let ledger = sandbox.ledger();
    assert_eq!(ledger.len(), 50);
    assert!(ledger.paid_twice().is_empty());
    let resent = Wire::of(&proxy)
        .offers()
        .values()
        .filter(|n| **n > 1)
        .count();
    assert!(resent >= 2, "items were sent again ({resent})");
}

#[test]
fn a_pack_sent_again_in_another_order_gets_each_item_its_own_result() {
    // The proxy loses the answers to every 10th pack of two (the sandbox paid them). The
    // sandbox finds a payment only after 20 provider minutes, so both items of such a pack are
    // "not found" after payrun's 3 and are sent again. The proxy hands lookups asked together
    // back in reverse order while payrun is busy with other answers, so payrun learns of a
    // pack's second item first and sends the pack again in the other order — under the same
    // request id: Paysend replays its first answer, whose results are in the first order.
    let sandbox = sandbox()
        .paysend("propagation_delay: 20m")
        .paysend("accept_time: 0s")
        .paysend("level_time: 0s")
        .start();
    let proxy = Proxy::spec(&sandbox.root)
        .dropping_answers(10, 100)
        .reversing_lookups()
        .start();
    let batch = Batch::payroll_of(&sandbox, 200)
        .limits(300, 20, 16, 2)
        .environment(&format!("{}/paysend", proxy.root));

    batch.run().succeeds();

    let reordered = reordered_replays(&proxy);
    let ledger = sandbox.ledger();
    for r in &batch.report().rows {
        assert_eq!(
            r.get("payment_id"),
            ledger.for_key(r.key())[0]["payment_id"],
            "{} is reported with another item's payment; packs sent again reordered under the \
             same request id (id, first order, second order): {reordered:?}",
            r.id()
        );
    }
}

/// Requests the proxy saw twice under one request id, the second time with its items in
/// another order and answered.
fn reordered_replays(proxy: &Proxy) -> Vec<(String, Vec<String>, Vec<String>)> {
    let mut first: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut out = Vec::new();
    for e in proxy.exchanges().iter().filter(|e| e.is_payout()) {
        let id = e.request["header"]["request"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        let order: Vec<String> = e.invoices().iter().map(|s| s.to_string()).collect();
        match first.get(&id) {
            Some(was) if *was != order && e.status.is_some() => out.push((id, was.clone(), order)),
            Some(_) => {}
            None => {
                first.insert(id, order);
            }
        }
    }
    out
}

#[test]
fn an_item_in_doubt_is_settled_even_when_its_lookups_are_answered_asynchronously() {
    // Paysend answers at once only what finishes within the 2 s it waits (L73); here each
    // level of a task tree takes 20 provider minutes, so a task.statusGet lookup is answered
    // "InProgress" and its result shows up later, under the lookup's own globalId.
    let sandbox = sandbox().paysend("level_time: 20m").start();
    let batch = Batch::payroll_of(&sandbox, 6).packs_of(2);
    batch
        .run()
        .env("PAYRUN_CRASH_AT", "after-send:1")
        .dies_by_sigkill();

    batch.resume().succeeds();

    batch.report().all_paid().agrees_with(&sandbox.ledger());
    assert_eq!(sandbox.ledger().len(), 6);
}
