//! The runner: the I/O around the pure state machine. One loop owns every item's state; it
//! ticks the items that are due, commits their new states in one transaction, and only then
//! performs the effects (packed submissions, lookups) on spawned tasks bounded by the rate
//! limiter and the concurrency cap. Answers come back as events, are applied, and committed
//! together (group commit).
//!
//! This first runner drives Paysend by polling (GET /processing/status, then task.statusGet);
//! webhooks, preflight tasks and delayed subtrees come next (issue 4).

use super::machine::{self, Effect, Event, Millis, State, Timings, Verdict};
use super::store::{Record, Store, StoreError};
use crate::compile::Flow;
use crate::providers::paysend::{self, Answer};
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// One item as planned: identity, content digest and its task trees (with real values; kept in
/// memory only, never stored).
pub struct PlannedItem {
    pub id: String,
    pub key: String,
    pub digest: String,
    pub line: u64,
    pub trees: Vec<Value>,
    pub money: Vec<(String, String)>,
}

/// Where and as whom to send.
#[derive(Clone)]
pub struct Endpoint {
    pub base_url: String,
    pub partner_id: String,
    pub inbound_key: String,
    /// Requests already sent against the provider's rate just before the run (preflight): the
    /// run's limiter starts with that many fewer in its burst.
    pub spent: u32,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Summary {
    pub items: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub needs_review: usize,
    pub unfinished: usize,
    pub requests: u64,
    pub commits: u64,
}

pub fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn rfc3339(ms: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, false)
}

/// What a spawned request reports back.
enum Outcome {
    Sent(Vec<(usize, Verdict)>),
    Observed(Vec<(usize, Verdict)>),
    /// A verified expanded webhook: the item's key and what it says.
    Webhook(String, Verdict),
    /// A basic callback: the request with this globalId finished; ask about its items now.
    Finished(String),
}

/// Where Paysend's notifications are received (the manifest's `notifications`).
#[derive(Clone)]
pub struct Listener {
    pub listen: std::net::SocketAddr,
    /// The URL Paysend calls for basic callbacks (`header.service.result`).
    pub callback_url: String,
    /// Verifies expanded webhooks (MD5 of raw body + key).
    pub outbound_key: String,
}

/// Serves `POST /paysend/webhook` (expanded webhooks, verified in constant time; forged ones
/// are refused and logged) and `GET|POST /paysend/callback` (basic callbacks with globalId).
async fn listen(
    l: Listener,
    tx: tokio::sync::mpsc::UnboundedSender<Outcome>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    use axum::routing::post;
    let socket = tokio::net::TcpListener::bind(l.listen).await?;
    let key = l.outbound_key.clone();
    let tx_hook = tx.clone();
    let webhook = move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
        let (key, tx) = (key.clone(), tx_hook.clone());
        async move {
            let sig = headers
                .get("x-opp-signature")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !paysend::webhook_is_authentic(&body, sig, &key) {
                tracing::warn!("refused a webhook with a wrong signature");
                return axum::http::StatusCode::UNAUTHORIZED;
            }
            if let Some((invoice, verdict)) = paysend::webhook_verdict(&body) {
                let _ = tx.send(Outcome::Webhook(invoice, verdict));
            }
            axum::http::StatusCode::OK
        }
    };
    let tx_get = tx.clone();
    let callback_get = move |q: axum::extract::Query<std::collections::HashMap<String, String>>| {
        let tx = tx_get.clone();
        async move {
            if let Some(g) = q.get("globalId") {
                let _ = tx.send(Outcome::Finished(g.clone()));
            }
            axum::http::StatusCode::OK
        }
    };
    let callback_post = move |body: String| {
        let tx = tx.clone();
        async move {
            if let Some(g) = body.trim().strip_prefix("globalId=") {
                let _ = tx.send(Outcome::Finished(g.to_string()));
            }
            axum::http::StatusCode::OK
        }
    };
    let app = axum::Router::new()
        .route("/paysend/webhook", post(webhook))
        .route(
            "/paysend/callback",
            axum::routing::get(callback_get).post(callback_post),
        );
    Ok(tokio::spawn(async move {
        let _ = axum::serve(socket, app).await;
    }))
}

/// Runs `items` to the end (or until `stop` is set), resuming from whatever `store` holds.
pub async fn run(
    flow: &Flow,
    items: &[PlannedItem],
    store: &mut Store,
    endpoint: &Endpoint,
    timings: &Timings,
    stop: Arc<AtomicBool>,
    listener: Option<Listener>,
) -> Result<Summary, StoreError> {
    let policy = &flow.manifest.retry;
    let limits = &flow.limits;
    let stored: BTreeMap<u64, Record> = store.items()?.into_iter().collect();
    let mut recs: Vec<Record> = items
        .iter()
        .enumerate()
        .map(|(i, it)| {
            stored.get(&(i as u64)).cloned().unwrap_or_else(|| {
                Record::planned(&it.id, &it.key, &it.digest, it.line, it.money.clone())
            })
        })
        .collect();
    // A resumed run: whatever was being sent when it stopped is now in doubt.
    let now = now_ms();
    let mut changed: Vec<usize> = Vec::new();
    for (i, r) in recs.iter_mut().enumerate() {
        if stored.contains_key(&(i as u64)) && !r.state.is_final() {
            let (s, _) = machine::step(&r.state, Event::Resume { now }, policy, timings);
            if s != r.state {
                r.state = s;
                r.updated = now;
                changed.push(i);
            }
        }
    }
    commit(store, &recs, &mut changed)?;

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| StoreError(e.to_string()))?;
    // 1% under the configured rate: requests that leave evenly spaced can still arrive bunched,
    // and a provider's limiter counts arrivals.
    let period = Duration::from_secs_f64(1.0 / (limits.requests_per_second.max(0.001) * 0.99));
    let burst = std::num::NonZeroU32::new(limits.burst.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
    let quota = governor::Quota::with_period(period)
        .unwrap_or_else(|| governor::Quota::per_second(std::num::NonZeroU32::MIN))
        .allow_burst(burst);
    let limiter = Arc::new(governor::RateLimiter::direct(quota));
    for _ in 0..endpoint.spent {
        let _ = limiter.check();
    }
    let slots = Arc::new(tokio::sync::Semaphore::new(
        limits.concurrency.max(1) as usize
    ));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Outcome>();
    let shared = Arc::new(flow.clone());
    let mut in_flight: HashSet<usize> = HashSet::new();
    let pack = limits.tasks_per_request.max(1) as usize;
    let mut requests = 0u64;
    // Effects that answers asked for (e.g. "the provider never saw it: send again"); carried
    // out next round, after their states are committed.
    let mut sends: Vec<usize> = Vec::new();
    let mut lookups: Vec<usize> = Vec::new();
    let holder = super::status::Holder::me(&rfc3339(now_ms()));
    let mut progress = super::progress::Progress::new(recs.len());
    // Items already settled before this run are not announced again.
    let settled: Vec<usize> = (0..recs.len())
        .filter(|&i| recs[i].state.is_final() || matches!(recs[i].state, State::NeedsReview { .. }))
        .collect();
    progress.already(&recs, &settled);
    let callback = listener.as_ref().map(|l| l.callback_url.clone());
    let by_key: std::collections::HashMap<&str, usize> = items
        .iter()
        .enumerate()
        .map(|(i, it)| (it.key.as_str(), i))
        .collect();
    let server = match &listener {
        Some(l) => Some(listen(l.clone(), tx.clone()).await.map_err(|e| {
            StoreError(format!(
                "cannot listen for notifications on {}: {e}",
                l.listen
            ))
        })?),
        None => None,
    };
    let snapshot = store.path.with_extension("status.json");
    let mut last_snapshot = std::time::Instant::now() - Duration::from_secs(1);

    loop {
        let stopping = stop.load(Ordering::Relaxed);
        let now = now_ms();
        if stopping {
            sends.clear();
            lookups.clear();
        }
        if !stopping {
            for i in 0..recs.len() {
                let state = &recs[i].state;
                let due = matches!(state, State::Planned) || state.due().is_some_and(|d| d <= now);
                if in_flight.contains(&i) || state.is_final() || !due {
                    continue;
                }
                apply(
                    &mut recs,
                    i,
                    Event::Tick { now },
                    policy,
                    timings,
                    &mut Routes {
                        changed: &mut changed,
                        sends: &mut sends,
                        lookups: &mut lookups,
                    },
                );
            }
        }
        // Durable before anything leaves: a crash after this commit finds `Sending`.
        progress.update(&recs, &changed, in_flight.len());
        commit(store, &recs, &mut changed)?;
        tracing::debug!(
            sends = sends.len(),
            lookups = lookups.len(),
            in_flight = in_flight.len(),
            "tick"
        );

        // Effects asked for earlier may have been overtaken (a webhook settled the item): only
        // what the current state still calls for is carried out.
        let mut sends_now = std::mem::take(&mut sends);
        sends_now
            .retain(|&i| matches!(recs[i].state, State::Sending { .. }) && !in_flight.contains(&i));
        sends_now.dedup();
        let mut lookups_now = std::mem::take(&mut lookups);
        lookups_now.retain(|&i| !recs[i].state.is_final() && !in_flight.contains(&i));
        lookups_now.sort_unstable();
        lookups_now.dedup();
        for chunk in sends_now.chunks(pack) {
            let idx: Vec<usize> = chunk.to_vec();
            in_flight.extend(&idx);
            requests += 1;
            for &i in &idx {
                recs[i].requests += 1;
            }
            let keys: Vec<&str> = idx.iter().map(|&i| items[i].key.as_str()).collect();
            let trees: Vec<Value> = idx.iter().flat_map(|&i| items[i].trees.clone()).collect();
            let sub = paysend::submission(
                &endpoint.partner_id,
                &endpoint.inbound_key,
                &keys,
                trees,
                callback.as_deref(),
                &rfc3339(now),
            );
            let (http, limiter, slots, tx, url) = (
                http.clone(),
                limiter.clone(),
                slots.clone(),
                tx.clone(),
                format!("{}/processing", endpoint.base_url),
            );
            let n = idx.len();
            let flow_tasks = Arc::clone(&shared);
            tokio::spawn(async move {
                let _slot = slots.acquire().await;
                limiter.until_ready().await;
                super::crash::point("before-send");
                let answer = post(&http, &url, sub.body, &sub.signature).await;
                super::crash::point("after-send");
                // The items of a pack share its globalId; each keeps its place in the pack, which
                // is where its tree sits in every status answer.
                let verdicts = paysend::classify_submission(&flow_tasks, &answer, n)
                    .into_iter()
                    .enumerate()
                    .map(|(pos, v)| match v {
                        Verdict::Accepted { reference } => Verdict::Accepted {
                            reference: format!("{reference}#{pos}"),
                        },
                        v => v,
                    });
                let _ = tx.send(Outcome::Sent(idx.into_iter().zip(verdicts).collect()));
            });
        }
        // Lookups: a submitted pack is asked about once by its globalId; the rest by key.
        let mut by_reference: BTreeMap<String, Vec<(usize, usize)>> = BTreeMap::new();
        for &i in &lookups_now {
            in_flight.insert(i);
            recs[i].requests += 1;
            match &recs[i].state {
                State::Submitted { reference, .. } => {
                    let (global, pos) = reference
                        .rsplit_once('#')
                        .unwrap_or((reference.as_str(), "0"));
                    by_reference
                        .entry(global.to_string())
                        .or_default()
                        .push((i, pos.parse().unwrap_or(0)));
                }
                _ => {
                    requests += 1;
                    let sub = paysend::lookup(
                        &endpoint.partner_id,
                        &endpoint.inbound_key,
                        &items[i].key,
                        recs[i].requests,
                        &rfc3339(now),
                    );
                    let (http, limiter, slots, tx, url) = (
                        http.clone(),
                        limiter.clone(),
                        slots.clone(),
                        tx.clone(),
                        format!("{}/processing", endpoint.base_url),
                    );
                    tokio::spawn(async move {
                        let _slot = slots.acquire().await;
                        limiter.until_ready().await;
                        let answer = post(&http, &url, sub.body, &sub.signature).await;
                        let _ = tx.send(Outcome::Observed(vec![(
                            i,
                            paysend::classify_lookup(&answer),
                        )]));
                    });
                }
            }
        }
        for (global, members) in by_reference {
            requests += 1;
            let (http, limiter, slots, tx) =
                (http.clone(), limiter.clone(), slots.clone(), tx.clone());
            let url = format!("{}/processing/status/{global}", endpoint.base_url);
            let signature = paysend::sign(global.as_bytes(), &endpoint.inbound_key);
            let flow_tasks = Arc::clone(&shared);
            tokio::spawn(async move {
                let _slot = slots.acquire().await;
                limiter.until_ready().await;
                let answer = match http
                    .get(&url)
                    .header("X-OPP-Signature", signature)
                    .send()
                    .await
                {
                    Ok(r) => Answer::Http {
                        status: r.status().as_u16(),
                        body: r.bytes().await.map(|b| b.to_vec()).unwrap_or_default(),
                        retry_after: None,
                    },
                    Err(_) => Answer::Transport { maybe_sent: false },
                };
                let n = members.iter().map(|(_, p)| p + 1).max().unwrap_or(1);
                let verdicts: Vec<Verdict> = match &answer {
                    Answer::Http {
                        status: 200, body, ..
                    } => match serde_json::from_slice::<Value>(body) {
                        Ok(v) => paysend::classify_envelope(&flow_tasks, &v, n),
                        Err(_) => vec![Verdict::InDoubt; n],
                    },
                    // Outside its window the globalId is unknown: look the keys up instead.
                    Answer::Http { status: 400, .. } => vec![Verdict::Unknown; n],
                    _ => vec![
                        Verdict::RetryLater {
                            class: super::backoff::ErrorClass::Network,
                            retry_after: None
                        };
                        n
                    ],
                };
                let _ = tx.send(Outcome::Observed(
                    members
                        .into_iter()
                        .map(|(i, p)| (i, verdicts[p].clone()))
                        .collect(),
                ));
            });
        }

        let settled = recs
            .iter()
            .all(|r| r.state.is_final() || matches!(r.state, State::NeedsReview { .. }));
        if in_flight.is_empty() && (settled || stopping) {
            break;
        }
        // Wait for an answer, the next due time, or a stop.
        let next_due = recs
            .iter()
            .enumerate()
            .filter(|(i, _)| !in_flight.contains(i))
            .filter_map(|(_, r)| r.state.due())
            .filter(|_| !stopping)
            .min();
        let wait = next_due
            .map(|d| Duration::from_millis(d.saturating_sub(now_ms()).min(60_000)))
            .unwrap_or(Duration::from_millis(500));
        let first = tokio::select! {
            m = rx.recv() => m,
            _ = tokio::time::sleep(wait) => None,
        };
        // Apply every answer that is in, then commit them together.
        let mut msgs: Vec<Outcome> = first.into_iter().collect();
        while let Ok(m) = rx.try_recv() {
            msgs.push(m);
        }
        let now = now_ms();
        for m in msgs {
            let (list, sent) = match m {
                Outcome::Sent(l) => (l, true),
                Outcome::Observed(l) => (l, false),
                // A notification is one more observation; duplicates and stale ones are absorbed
                // by the state machine. It does not end a request in flight for that item.
                Outcome::Webhook(key, verdict) => match by_key.get(key.as_str()) {
                    Some(&i) if !in_flight.contains(&i) => (vec![(i, verdict)], false),
                    _ => continue,
                },
                // Ask about that request's items now instead of at their next poll.
                Outcome::Finished(global) => {
                    let prefix = format!("{global}#");
                    for (i, r) in recs.iter().enumerate() {
                        if let State::Submitted { reference, .. } = &r.state
                            && reference.starts_with(&prefix)
                            && !in_flight.contains(&i)
                        {
                            lookups.push(i);
                        }
                    }
                    continue;
                }
            };
            for (i, verdict) in list {
                in_flight.remove(&i);
                tracing::debug!(item = %recs[i].id, ?verdict, sent, "answer");
                let event = if sent {
                    Event::Sent { verdict, now }
                } else {
                    Event::Observed { verdict, now }
                };
                apply(
                    &mut recs,
                    i,
                    event,
                    policy,
                    timings,
                    &mut Routes {
                        changed: &mut changed,
                        sends: &mut sends,
                        lookups: &mut lookups,
                    },
                );
            }
        }
        progress.update(&recs, &changed, in_flight.len());
        commit(store, &recs, &mut changed)?;
        // While this process holds the store, others read the batch's status from here.
        if last_snapshot.elapsed() > Duration::from_millis(300) {
            write_snapshot(&snapshot, &flow.manifest.batch, &recs, Some(holder.clone()));
            last_snapshot = std::time::Instant::now();
        }
    }
    progress.update(&recs, &changed, in_flight.len());
    commit(store, &recs, &mut changed)?;
    progress.finish();
    write_snapshot(&snapshot, &flow.manifest.batch, &recs, None);
    if let Some(s) = server {
        s.abort();
    }
    let mut s = Summary {
        items: recs.len(),
        requests,
        commits: store.commits,
        ..Summary::default()
    };
    for r in &recs {
        match r.state {
            State::Succeeded { .. } => s.succeeded += 1,
            State::Failed { .. } => s.failed += 1,
            State::NeedsReview { .. } => s.needs_review += 1,
            _ => s.unfinished += 1,
        }
    }
    Ok(s)
}

/// Replaces the status snapshot atomically (write, then rename). A failure only costs freshness.
fn write_snapshot(
    path: &std::path::Path,
    batch: &str,
    recs: &[Record],
    holder: Option<super::status::Holder>,
) {
    let view = super::status::view(batch, recs, holder);
    let tmp = path.with_extension("json.partial");
    if let Ok(bytes) = serde_json::to_vec_pretty(&view)
        && std::fs::write(&tmp, bytes).is_ok()
    {
        let _ = std::fs::rename(&tmp, path);
    }
}

/// Where a step's consequences go: the items to commit, to send and to look up.
struct Routes<'a> {
    changed: &'a mut Vec<usize>,
    sends: &'a mut Vec<usize>,
    lookups: &'a mut Vec<usize>,
}

/// Steps item `i` with `event`: records a changed state and routes the effects.
fn apply(
    recs: &mut [Record],
    i: usize,
    event: Event,
    policy: &crate::manifest::RetryPolicy,
    timings: &Timings,
    to: &mut Routes,
) {
    let now = match &event {
        Event::Tick { now }
        | Event::Sent { now, .. }
        | Event::Observed { now, .. }
        | Event::Resume { now } => *now,
    };
    let (s, fx) = machine::step(&recs[i].state, event, policy, timings);
    if s != recs[i].state {
        let r = &mut recs[i];
        if matches!(s, State::Sending { .. }) && r.first_sent.is_none() {
            r.first_sent = Some(now);
        }
        r.updated = now;
        r.state = s;
        to.changed.push(i);
    }
    for e in fx {
        match e {
            Effect::Send { .. } => to.sends.push(i),
            Effect::Lookup => to.lookups.push(i),
            Effect::WakeAt(_) => {}
        }
    }
}

fn commit(store: &mut Store, recs: &[Record], changed: &mut Vec<usize>) -> Result<(), StoreError> {
    changed.sort_unstable();
    changed.dedup();
    let rows: Vec<(u64, &Record)> = changed.iter().map(|&i| (i as u64, &recs[i])).collect();
    store.commit(&rows)?;
    changed.clear();
    Ok(())
}

async fn post(http: &reqwest::Client, url: &str, body: Vec<u8>, signature: &str) -> Answer {
    match http
        .post(url)
        .header("content-type", "application/json")
        .header("X-OPP-Signature", signature)
        .body(body)
        .send()
        .await
    {
        Ok(r) => {
            let status = r.status().as_u16();
            let retry_after = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|s| s.parse::<u64>().ok())
                .map(Duration::from_secs);
            match r.bytes().await {
                Ok(b) => Answer::Http {
                    status,
                    body: b.to_vec(),
                    retry_after,
                },
                // The answer began but broke off: the request did arrive.
                Err(_) => Answer::Transport { maybe_sent: true },
            }
        }
        // A connection that could not be made sent nothing; anything else may have.
        Err(e) => Answer::Transport {
            maybe_sent: !e.is_connect(),
        },
    }
}
