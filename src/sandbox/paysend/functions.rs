//! What each Paysend function does in the sandbox: payload checks (2000 for payouts, 1000 for
//! the rest, as the Mock Service describes), the mock's error triggers, money movements with
//! the 3011 and 3009 rules, lookups, and the notifications sent when a request finishes.

use super::codes;
use super::tree::Outcome;
use super::{Payment, Stored};
use crate::sandbox::State;
use crate::sandbox::faults;
use crate::sandbox::ledger::Entry;
use crate::schema::Registry;
use serde_json::{Value, json};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The request being committed.
pub struct Ctx<'a> {
    pub state: &'a Arc<State>,
    pub request_id: &'a str,
    pub accepted_at: Duration,
    /// Payments made by this request, for the expanded webhooks.
    pub payments: Vec<Payment>,
}

fn ok(data: Value) -> Outcome {
    Outcome {
        ok: true,
        result: super::tree::compact(&json!({"status": "Success", "code": 0, "data": data})),
    }
}

fn err(code: u32) -> Outcome {
    Outcome {
        ok: false,
        result: super::tree::compact(
            &json!({"status": "Error", "code": code, "comment": codes::comment(code)}),
        ),
    }
}

/// The Paysend schemas, loaded once: the sandbox checks payloads by the same documented rules.
fn schemas() -> Option<&'static crate::schema::Provider> {
    static P: OnceLock<Option<crate::schema::Provider>> = OnceLock::new();
    P.get_or_init(|| Registry::Embedded.provider("paysend").ok())
        .as_ref()
}

/// The payload paths of a function that the schemas call sensitive (never journaled).
pub fn sensitive_paths(ty: &str) -> Vec<&'static str> {
    schemas()
        .and_then(|p| p.operation(ty))
        .map(|op| {
            op.fields
                .iter()
                .filter(|f| f.sensitive)
                .map(|f| f.path.as_str())
                .collect()
        })
        .unwrap_or_default()
}

fn text(v: &Value, path: &str) -> Option<String> {
    let mut cur = v;
    for seg in path.split('.') {
        cur = cur.get(seg)?;
    }
    match cur {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A JSON number for an exact decimal.
fn number(minor: i128, exponent: u32) -> Value {
    let d = rust_decimal::Decimal::try_from_i128_with_scale(minor, exponent)
        .unwrap_or_default()
        .normalize();
    serde_json::from_str(&d.to_string()).unwrap_or(Value::Null)
}

/// Executes one task at `level` of its tree.
pub fn execute(ctx: &mut Ctx, ty: &str, payload: &Value, level: usize) -> Outcome {
    // Payload rules where payrun has the function's schema (the payout and lookup functions).
    if let Some(op) = schemas().and_then(|p| p.operation(ty)) {
        let errors = crate::schema::payload::check_payload(op, payload);
        if !errors.is_empty() {
            if ty.starts_with("pay.") {
                // Error 2000, Option 2 (L690, real example L4986-5005): `value` holds the
                // field's name, as the document's own example does.
                let list: Vec<Value> = errors
                    .iter()
                    .map(|e| json!({"path": e.path, "value": e.path.rsplit('.').next().unwrap_or(""), "errorTypes": [e.violation.message]}))
                    .collect();
                return Outcome {
                    ok: false,
                    result: super::tree::compact(
                        &json!({"status": "Error", "code": 2000, "comment": "Validation error.",
                        "data": {"validationResult": {"errors": list, "status": "Error", "message": "Validation error."}}}),
                    ),
                };
            }
            // The Mock Service answers a missing or mismatched field with 1000 (L283-344).
            return err(1000);
        }
    }
    // The Mock Service's triggers: an error code as the value of the function's trigger field.
    if let Some((field, list)) = codes::triggers(ty)
        && let Some(v) = text(payload, field)
        && let Ok(d) = v.parse::<rust_decimal::Decimal>()
        && d.fract().is_zero()
        && let Ok(code) = u32::try_from(d.trunc().mantissa())
        && list.contains(&code)
    {
        return err(code);
    }
    match ty {
        "pay.toAccount" => pay(
            ctx,
            ty,
            payload,
            level,
            "transferAmount",
            "transferCurrency",
            "to.destinationTransactionInstrument.accountIdentifier",
        ),
        "pay.toCard" => pay(
            ctx,
            ty,
            payload,
            level,
            "to.amount",
            "to.currency",
            "to.cardNumber",
        ),
        "task.statusGet" => status_get(ctx, payload),
        "getBalance" => balance(ctx, payload),
        "fx.rateGet" => fx(payload, "currencyIn", "currencyOut", "amountIn", true),
        "fx.rateGet.p2a" => fx_p2a(payload),
        "card.infoGet" => card_info(payload),
        "card.createToken" => create_token(ctx, payload),
        "partner.statementGet" => statement(ctx, payload),
        // Choice: an unknown task type is a processing error (1000); the document lists no
        // better code.
        _ => err(1000),
    }
}

#[allow(clippy::too_many_arguments)]
fn pay(
    ctx: &mut Ctx,
    ty: &str,
    p: &Value,
    level: usize,
    amount_at: &str,
    currency_at: &str,
    recipient_at: &str,
) -> Outcome {
    let state = ctx.state;
    let ps = &state.paysend;
    let Some(invoice) = text(p, "invoiceId") else {
        return err(2000);
    };
    let Some(currency) = text(p, currency_at).and_then(|c| crate::money::Currency::from_any(&c))
    else {
        return err(2000);
    };
    let code = currency.code();
    let exp = currency.exponent().unwrap_or(2);
    let Some(amount) = text(p, amount_at).and_then(|a| crate::money::parse_amount(&a, exp).ok())
    else {
        return err(2000);
    };
    let recipient = text(p, recipient_at)
        .or_else(|| text(p, "to.token"))
        .unwrap_or_default();
    // The invoice shard stays locked from the 3011 check to the record, so one invoiceId can
    // never be paid twice, however requests interleave.
    let mut invoices = ps.invoices.shard(&invoice);
    if invoices
        .get(&invoice)
        .is_some_and(super::kept::Paid::succeeded)
    {
        state
            .ledger
            .bump(crate::sandbox::ledger::Counter::DuplicatesRefused);
        return err(3011);
    }
    {
        let mut balances = ps.balances.shard(&code);
        let bal = balances.entry(code.clone()).or_insert(0);
        if *bal < amount.minor {
            return err(3009);
        }
        *bal -= amount.minor;
        // Journaled while the balance is locked, so the file holds debits in their order.
        state
            .ledger
            .journal_record(|| crate::sandbox::journal::Record::PaysendBalance {
                currency: code.clone(),
                minor: *bal,
            });
    }
    let cfg = &ps.config;
    let payment_id = ps.new_id(&invoice);
    let done_at = ctx.accepted_at + cfg.accept_time + cfg.level_time * (level as u32 + 1);
    let data = super::kept::payout_data(
        &payment_id,
        (ty == "pay.toCard").then(|| (number(amount.minor, exp), code.as_str())),
    );
    // A held payout is not declined: the money is reserved and the payment completes once the
    // manual review is over. Meanwhile the task reports code 5 (L612-619).
    let f = state.faults();
    let mut rng = faults::rng(state.seed, &invoice, 0, "paysend.hold");
    let held_until = faults::happens(&mut rng, f.on_hold_rate)
        .then(|| done_at + f.hold_time.unwrap_or(Duration::from_secs(3600)));
    let payment = Payment {
        payment_id: payment_id.clone(),
        invoice_id: invoice.clone(),
        accepted_at: ctx.accepted_at,
        done_at,
        error: None,
        held_until,
        data: data.clone(),
    };
    state
        .ledger
        .journal_record(|| crate::sandbox::journal::Record::PaysendPayment {
            payment: payment.clone(),
        });
    invoices.insert(&invoice, super::kept::Paid::new(&payment));
    drop(invoices);
    ps.index_payment(&payment_id, &invoice);
    state.ledger.record(Entry {
        provider: "paysend".into(),
        key: invoice,
        payment_id,
        operation: ty.to_string(),
        amount: rust_decimal::Decimal::try_from_i128_with_scale(amount.minor, exp)
            .unwrap_or_default()
            .to_string(),
        currency: code,
        recipient_digest: state.ledger.recipient_digest(&recipient),
        time: state.clock.date(done_at),
        request_id: ctx.request_id.to_string(),
    });
    ctx.payments.push(payment);
    if held_until.is_some() {
        return Outcome {
            ok: false,
            result: super::tree::compact(
                &json!({"status": "Error", "code": 5, "comment": super::kept::ON_HOLD, "data": data}),
            ),
        };
    }
    ok(data)
}

/// task.statusGet by identifier (a paymentId) or invoiceId.
fn status_get(ctx: &mut Ctx, p: &Value) -> Outcome {
    let ps = &ctx.state.paysend;
    let identifier = text(p, "identifier");
    let invoice = text(p, "invoiceId");
    if let Some(code) = codes::mock_status_code(identifier.as_deref(), invoice.as_deref()) {
        return err(code);
    }
    let invoice = invoice.or_else(|| identifier.and_then(|id| ps.invoice_of(&id)));
    let payment = invoice.and_then(|i| ps.invoices.shard(&i).get(&i).map(|p| p.payment(&i)));
    let now = ctx.state.clock.now();
    match payment {
        // During the propagation delay after acceptance the payment cannot be found yet
        // (L633: wait at least 3 minutes). Choice: a payment never made is also 3006 ("No
        // data was found for id provided"), not the mock's 1000 for arbitrary values, so that
        // an in-doubt payment that never arrived reads as "not found".
        Some(pm) if now >= pm.accepted_at + ps.config.propagation_delay => match pm.error {
            Some(code) => err(code),
            None if pm.held_until.is_some_and(|h| now < h) => Outcome {
                ok: false,
                result: super::tree::compact(
                    &json!({"status": "Error", "code": 5, "comment": "Offline Antifraud check: RFI",
                    "data": {"code": "5", "status": {"code": "5", "description": "OnHold"}, "invoiceId": pm.invoice_id, "paymentId": pm.payment_id}}),
                ),
            },
            None => {
                let mut data = json!({
                    "code": "0",
                    "status": {"code": "2", "description": "Completed"},
                    "traceId": pm.data.get("traceId").cloned().unwrap_or(Value::Null),
                    "invoiceId": pm.invoice_id,
                    "paymentId": pm.payment_id,
                });
                for k in ["arn", "rrn", "finance"] {
                    if let Some(v) = pm.data.get(k) {
                        data[k] = v.clone();
                    }
                }
                ok(data)
            }
        },
        _ => err(3006),
    }
}

fn balance(ctx: &mut Ctx, p: &Value) -> Outcome {
    let ps = &ctx.state.paysend;
    let wanted = text(p, "currency")
        .and_then(|c| crate::money::Currency::from_any(&c))
        .map(|c| c.code());
    let mut balances = serde_json::Map::new();
    for code in ps.config.balances.keys() {
        if wanted.as_ref().is_some_and(|w| w != code) {
            continue;
        }
        let minor = ps.balances.shard(code).get(code).copied().unwrap_or(0);
        let exp = crate::money::Currency::from_alpha(code)
            .and_then(|c| c.exponent())
            .unwrap_or(2);
        balances.insert(code.clone(), number(minor, exp));
    }
    ok(json!({"balances": balances}))
}

/// Indicative rates against USD; the sandbox's quotes are fixed so tests can predict them.
fn usd_rate(code: &str) -> rust_decimal::Decimal {
    let r = match code {
        "USD" => "1",
        "EUR" => "0.92",
        "GBP" => "0.78",
        "JPY" => "151.2",
        "KWD" => "0.307",
        "PKR" => "278.5",
        "CHF" => "0.88",
        "DKK" => "6.87",
        _ => "1.5",
    };
    r.parse().unwrap_or(rust_decimal::Decimal::ONE)
}

fn fx(p: &Value, from_at: &str, to_at: &str, amount_at: &str, additional: bool) -> Outcome {
    let (Some(from), Some(to)) = (text(p, from_at), text(p, to_at)) else {
        return err(1000);
    };
    let Some(amount) = text(p, amount_at).and_then(|a| a.parse::<rust_decimal::Decimal>().ok())
    else {
        return err(1000);
    };
    let rate = usd_rate(&to) / usd_rate(&from);
    let exp = crate::money::Currency::from_any(&to)
        .and_then(|c| c.exponent())
        .unwrap_or(2);
    let out = (amount * rate).round_dp(exp);
    let num = |d: rust_decimal::Decimal| {
        serde_json::from_str::<Value>(&d.normalize().to_string()).unwrap_or(Value::Null)
    };
    let finance = json!({"to": {"amount": num(out), "currency": to}, "from": {"amount": num(amount), "currency": from}, "rate": num(rate.round_dp(10))});
    if !additional {
        return ok(finance);
    }
    let additional: Vec<Value> = ["paysystem1", "paysystem2", "paysystem3"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let r = rate * (rust_decimal::Decimal::ONE - rust_decimal::Decimal::new(i as i64 + 1, 3));
            json!({"to": {"amount": num((amount * r).round_dp(exp)), "currency": to}, "from": {"amount": num(amount), "currency": from}, "name": name, "rate": num(r.round_dp(10))})
        })
        .collect();
    ok(json!({"finance": finance, "additionalRates": additional}))
}

/// fx.rateGet.p2a quotes what must be paid in to deliver `payoutAmount` (data at the top level,
/// L1624-1638).
fn fx_p2a(p: &Value) -> Outcome {
    let (Some(payin), Some(payout)) = (text(p, "payinCurrency"), text(p, "payoutCurrency")) else {
        return err(1000);
    };
    let Some(amount) =
        text(p, "payoutAmount").and_then(|a| a.parse::<rust_decimal::Decimal>().ok())
    else {
        return err(1000);
    };
    let rate = usd_rate(&payout) / usd_rate(&payin);
    let exp = crate::money::Currency::from_any(&payin)
        .and_then(|c| c.exponent())
        .unwrap_or(2);
    let num = |d: rust_decimal::Decimal| {
        serde_json::from_str::<Value>(&d.normalize().to_string()).unwrap_or(Value::Null)
    };
    ok(
        json!({"to": {"amount": num(amount), "currency": payout}, "from": {"amount": num((amount / rate).round_dp(exp)), "currency": payin}, "rate": num(rate.round_dp(10))}),
    )
}

fn card_info(p: &Value) -> Outcome {
    let Some(pan) = text(p, "pan") else {
        return err(1000);
    };
    let bin: String = pan.chars().take(6).collect();
    let system = match pan.chars().next() {
        Some('4') => "VISA",
        Some('5') | Some('2') => "MASTERCARD",
        _ => "UNKNOWN",
    };
    ok(json!({
        "fees": [],
        "extended": {"oct": {"domestic": "Y", "crossBorder": "Y"}, "description": "Credit Consumer", "fasterFunds": {"domestic": "Y", "crossBorder": "Y"}, "productType": "Credit", "settlementCurrency": "978", "settlementCurrencyAlphaCode": "EUR"},
        "paysystem": {"bank": "PAYSND", "country": "040", "product": "C", "bin_range": {"from": format!("{bin}000"), "to": format!("{bin}999")}, "account_type": "Unknown", "paysystem_type": system}
    }))
}

fn create_token(ctx: &Ctx, p: &Value) -> Outcome {
    let Some(card) = text(p, "cardNumber")
        .filter(|c| (12..=19).contains(&c.len()) && c.bytes().all(|b| b.is_ascii_digit()))
    else {
        return err(1000);
    };
    // Derived from the keyed digest: a token does not give its card away by brute force.
    let token = crate::keys::task_key(
        "paysend-sandbox/token",
        &ctx.state.ledger.recipient_digest(&card),
    );
    let masked = format!("{}******{}", &card[..6], &card[card.len() - 4..]);
    ok(
        json!({"token": token, "cardNumber": masked, "resultCode": 0, "countryCode": "040", "paymentSystem": if card.starts_with('4') { "VISA" } else { "MASTERCARD" }, "currencyIsoCode": "EUR"}),
    )
}

fn statement(ctx: &mut Ctx, p: &Value) -> Outcome {
    let currency = text(p, "currency");
    let page: usize = text(p, "pageNumber")
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
        .max(1);
    let size: usize = text(p, "pageSize")
        .and_then(|n| n.parse().ok())
        .unwrap_or(20)
        .clamp(1, 1000);
    let entries: Vec<Entry> = ctx
        .state
        .ledger
        .entries()
        .into_iter()
        .filter(|e| currency.as_ref().is_none_or(|c| *c == e.currency))
        .collect();
    let total = entries.len();
    let pages = total.div_ceil(size).max(1);
    let transactions: Vec<Value> = entries
        .iter()
        .skip((page - 1) * size)
        .take(size)
        .map(|e| {
            json!({"id": e.payment_id, "tags": null, "type": "transfer", "total": null, "amount": serde_json::from_str::<Value>(&e.amount).unwrap_or(Value::Null),
                "reason": null, "comment": null, "createdAt": e.time, "entryType": "debit", "invoiceId": e.key, "reference": e.payment_id, "paymentDate": e.time,
                "paymentType": if e.operation == "pay.toCard" { "payToCard" } else { "payToAccount" }, "publicTransactionId": null})
        })
        .collect();
    ok(
        json!({"id": crate::keys::task_key("paysend-sandbox/statement", ctx.request_id), "lastPage": page >= pages, "pageNumber": page, "totalPages": pages,
        "transactions": transactions, "totalTransactions": total}),
    )
}

fn md5_hex(parts: &[&[u8]]) -> String {
    use md5::{Digest, Md5};
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    crate::keys::hex_lower(&h.finalize())
}

/// Sends the notifications of a committed request: basic callbacks to every
/// `header.service.result` URI when the request finishes (L186-214), and, when configured, an
/// expanded `TransactionStatusUpdate` webhook per payment when it completes (L628-654), each
/// subject to the webhook faults.
pub fn notify(
    state: &Arc<State>,
    stored: &Arc<Stored>,
    request: &Value,
    finish: Duration,
    payments: Vec<Payment>,
) {
    if tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    let results: Vec<Value> = request
        .pointer("/header/service/result")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let webhook = state.paysend.config.webhook_url.clone();
    if results.is_empty() && (webhook.is_none() || payments.is_empty()) {
        return;
    }
    let request_id = request
        .pointer("/header/request/id")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let f = state.faults();
    let key = state.paysend.config.outbound_key.clone();
    let now = state.clock.now();
    let wait = |at: Duration| state.clock.real(at.saturating_sub(now));
    for (i, r) in results.iter().enumerate() {
        let Some(uri) = r.get("uri").and_then(Value::as_str).map(String::from) else {
            continue;
        };
        let method = r
            .get("method")
            .and_then(Value::as_str)
            .unwrap_or("GET")
            .to_ascii_uppercase();
        let global = stored.global_id.clone();
        // Keyed on what the client chose (request id, result index), not on the provider's
        // ids, which follow arrival order: the same run meets the same faults.
        let mut rng = faults::rng(state.seed, &request_id, i as u64, "paysend.callback");
        let plan = faults::delivery(
            &mut rng,
            &f,
            wait(finish),
            state.clock.real(state.paysend.config.level_time),
        )
        .sends;
        let key = key.clone();
        let state = Arc::clone(state);
        tokio::spawn(async move {
            for (delay, bad_signature) in plan {
                tokio::time::sleep(delay).await;
                // Never tell of an outcome the state file could still lose.
                if let Some(j) = state.ledger.journal()
                    && j.commit().await.is_err()
                {
                    return;
                }
                // Choice: a GET callback has no body, so its signature covers the globalId;
                // a POST callback's covers the form body, as for expanded webhooks.
                let (req, signed) = if method == "GET" {
                    (
                        crate::sandbox::notify_client()
                            .get(&uri)
                            .query(&[("globalId", &global)]),
                        md5_hex(&[global.as_bytes(), key.as_bytes()]),
                    )
                } else {
                    let body = format!("globalId={global}");
                    let sig = md5_hex(&[body.as_bytes(), key.as_bytes()]);
                    let m = reqwest::Method::from_bytes(method.as_bytes())
                        .unwrap_or(reqwest::Method::POST);
                    (
                        crate::sandbox::notify_client()
                            .request(m, &uri)
                            .header("content-type", "application/x-www-form-urlencoded")
                            .body(body),
                        sig,
                    )
                };
                let sig = if bad_signature {
                    md5_hex(&[b"forged", signed.as_bytes()])
                } else {
                    signed
                };
                let _ = req.header("X-OPP-Signature", sig).send().await;
                state
                    .ledger
                    .bump(crate::sandbox::ledger::Counter::WebhooksSent);
            }
        });
    }
    let Some(url) = webhook else { return };
    // A held payment is announced OnHold when its task ends, Completed when it is released.
    let events = payments.into_iter().flat_map(|pm| match pm.held_until {
        Some(until) => vec![
            (pm.clone(), pm.done_at, "OnHold", 1u64),
            (pm, until, "Completed", 2),
        ],
        None => {
            let status = if pm.error.is_none() {
                "Completed"
            } else {
                "Failed"
            };
            vec![(pm.clone(), pm.done_at, status, 0)]
        }
    });
    for (pm, at, status, n) in events {
        let mut rng = faults::rng(
            state.seed,
            &format!("{request_id}\u{1f}{}", pm.invoice_id),
            n,
            "paysend.webhook",
        );
        let plan = faults::delivery(
            &mut rng,
            &f,
            wait(at),
            state.clock.real(state.paysend.config.level_time),
        )
        .sends;
        let on_hold = status == "OnHold";
        let body = json!({
            "webhookType": "TransactionStatusUpdate",
            "invoiceId": pm.invoice_id,
            "transactionId": pm.payment_id,
            "status": status,
            "statusDateTime": state.clock.date(at),
            "errorCode": if on_hold { "5".to_string() } else { pm.error.unwrap_or(0).to_string() },
            "errorDescription": if on_hold { Some("Offline Antifraud check: RFI") } else { pm.error.map(codes::comment) },
            "rrn": pm.data.get("rrn").cloned().unwrap_or(Value::Null),
            "arn": pm.data.get("arn").cloned().unwrap_or(Value::Null),
            "traceId": pm.data.get("traceId").cloned().unwrap_or(Value::Null),
        })
        .to_string();
        let key = key.clone();
        let url = url.clone();
        let state = Arc::clone(state);
        tokio::spawn(async move {
            for (delay, bad_signature) in plan {
                tokio::time::sleep(delay).await;
                // Never tell of an outcome the state file could still lose.
                if let Some(j) = state.ledger.journal()
                    && j.commit().await.is_err()
                {
                    return;
                }
                let sig = md5_hex(&[
                    body.as_bytes(),
                    if bad_signature {
                        b"not-the-key"
                    } else {
                        key.as_bytes()
                    },
                ]);
                let _ = crate::sandbox::notify_client()
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("X-OPP-Signature", sig)
                    .body(body.clone())
                    .send()
                    .await;
                state
                    .ledger
                    .bump(crate::sandbox::ledger::Counter::WebhooksSent);
            }
        });
    }
}
