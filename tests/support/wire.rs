//! A recording proxy between payrun and the sandbox: it forwards every request, notes when it
//! arrived, what it asked and what came back (or that the connection was dropped, which it
//! passes on by dropping its own), so a test can check *when* the runner asked what.

#![allow(dead_code)]

use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// One request through the proxy.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// When the request arrived.
    pub at: Instant,
    /// When its answer went back, or the connection was dropped.
    pub done: Instant,
    pub method: String,
    pub path: String,
    pub request: Value,
    /// `None`: the sandbox dropped the connection without an answer.
    pub status: Option<u16>,
    pub response: Value,
}

impl Exchange {
    /// The task types of a POST /processing request (first level).
    pub fn task_types(&self) -> Vec<&str> {
        self.request
            .pointer("/payload/tasks")
            .and_then(Value::as_array)
            .map(|ts| ts.iter().filter_map(|t| t["type"].as_str()).collect())
            .unwrap_or_default()
    }

    /// The invoiceIds its tasks name.
    pub fn invoices(&self) -> Vec<&str> {
        self.request
            .pointer("/payload/tasks")
            .and_then(Value::as_array)
            .map(|ts| {
                ts.iter()
                    .filter_map(|t| t.pointer("/payload/invoiceId").and_then(Value::as_str))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn is_payout(&self) -> bool {
        self.task_types().iter().any(|t| t.starts_with("pay."))
    }

    pub fn is_lookup(&self) -> bool {
        self.task_types() == ["task.statusGet"]
    }

    /// The code of the first task's result, when answered.
    pub fn first_code(&self) -> Option<u64> {
        self.response
            .pointer("/payload/tasks/0/result/code")
            .and_then(Value::as_u64)
    }
}

#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("upstream dropped the connection")
    }
}

impl std::error::Error for Dropped {}

pub struct Proxy {
    /// `http://127.0.0.1:PORT` — the sandbox's paths work under it unchanged.
    pub root: String,
    log: Arc<Mutex<Vec<Exchange>>>,
    _runtime: tokio::runtime::Runtime,
}

/// What the proxy does besides forwarding.
#[derive(Default)]
pub struct ProxySpec {
    upstream: String,
    reverse_lookups: bool,
    drop_new_payouts: Option<(usize, usize)>,
}

/// Answers held back to be released together, newest first.
type Gate = Arc<Mutex<Vec<tokio::sync::oneshot::Sender<()>>>>;

fn release(gate: &Gate) {
    let waiting: Vec<_> = std::mem::take(&mut *gate.lock().unwrap());
    for r in waiting.into_iter().rev() {
        let _ = r.send(());
    }
}

/// Shared by every connection.
struct Shared {
    http: reqwest::Client,
    upstream: String,
    log: Arc<Mutex<Vec<Exchange>>>,
    gate: Option<Gate>,
    drop_new_payouts: Option<(usize, usize)>,
    /// Payout request ids seen so far.
    payouts: Mutex<std::collections::HashSet<String>>,
}

impl Proxy {
    /// A proxy in front of `upstream` (`http://127.0.0.1:PORT`), on a free loopback port,
    /// that only forwards and records.
    pub fn to(upstream: &str) -> Proxy {
        Proxy::spec(upstream).start()
    }

    pub fn spec(upstream: &str) -> ProxySpec {
        ProxySpec {
            upstream: upstream.trim_end_matches('/').to_string(),
            ..ProxySpec::default()
        }
    }

    pub fn exchanges(&self) -> Vec<Exchange> {
        self.log.lock().unwrap().clone()
    }
}

impl ProxySpec {
    /// Holds every answer to a task.statusGet lookup until just after the next other answer
    /// goes back (or 100 ms), then lets the held answers go back to back, the last one asked
    /// first: lookups asked together come back together, in reverse order, while the client
    /// is busy with another answer.
    pub fn reversing_lookups(mut self) -> Self {
        self.reverse_lookups = true;
        self
    }

    /// Drops the connection instead of passing on the answer to every `n`-th of the first
    /// `first` payout requests (the 1st, the n+1-th, …): the sandbox has processed them,
    /// payrun never hears. A request id seen before (a replay) is always answered.
    pub fn dropping_answers(mut self, every: usize, first: usize) -> Self {
        self.drop_new_payouts = Some((every, first));
        self
    }

    pub fn start(self) -> Proxy {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let log: Arc<Mutex<Vec<Exchange>>> = Arc::default();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let root = format!("http://{}", listener.local_addr().unwrap());
        let gate: Option<Gate> = self.reverse_lookups.then(|| {
            let gate: Gate = Arc::default();
            let held = Arc::clone(&gate);
            runtime.spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
                loop {
                    tick.tick().await;
                    release(&held);
                }
            });
            gate
        });
        let shared = Arc::new(Shared {
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(30))
                .build()
                .unwrap(),
            upstream: self.upstream,
            log: Arc::clone(&log),
            gate,
            drop_new_payouts: self.drop_new_payouts,
            payouts: Mutex::default(),
        });
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            forward(req, Arc::clone(&shared))
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Proxy {
            root,
            log,
            _runtime: runtime,
        }
    }
}

async fn forward(
    req: hyper::Request<hyper::body::Incoming>,
    shared: Arc<Shared>,
) -> Result<hyper::Response<axum::body::Body>, Dropped> {
    let Shared {
        http,
        upstream,
        log,
        gate,
        ..
    } = &*shared;
    let at = Instant::now();
    let method = req.method().as_str().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let headers = req.headers().clone();
    let body = axum::body::to_bytes(axum::body::Body::new(req.into_body()), usize::MAX)
        .await
        .map_err(|_| Dropped)?;
    let mut out = http.request(
        reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
        format!("{upstream}{path}"),
    );
    for name in ["content-type", "x-opp-signature"] {
        if let Some(v) = headers.get(name) {
            out = out.header(name, v.as_bytes());
        }
    }
    let answer = match out.body(body.to_vec()).send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            let kind = r
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("text/plain")
                .to_string();
            r.bytes().await.ok().map(|b| (status, kind, b))
        }
        Err(_) => None,
    };
    let mut entry = Exchange {
        at,
        done: Instant::now(),
        method,
        path,
        request: serde_json::from_slice(&body).unwrap_or(Value::Null),
        status: None,
        response: Value::Null,
    };
    let Some((status, kind, bytes)) = answer else {
        log.lock().unwrap().push(entry);
        return Err(Dropped);
    };
    if entry.is_payout()
        && let Some((every, first)) = shared.drop_new_payouts
    {
        let id = entry.request["header"]["request"]["id"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let mut seen = shared.payouts.lock().unwrap();
        if seen.insert(id) && seen.len() <= first && (seen.len() - 1).is_multiple_of(every) {
            drop(seen);
            log.lock().unwrap().push(entry);
            return Err(Dropped);
        }
    }
    entry.status = Some(status);
    entry.response = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    match gate {
        Some(gate) if entry.is_lookup() => {
            let (open, opened) = tokio::sync::oneshot::channel();
            gate.lock().unwrap().push(open);
            let _ = opened.await;
        }
        Some(gate) => {
            let gate = Arc::clone(gate);
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                release(&gate);
            });
        }
        None => {}
    }
    entry.done = Instant::now();
    log.lock().unwrap().push(entry);
    Ok(hyper::Response::builder()
        .status(status)
        .header("content-type", kind)
        .body(axum::body::Body::from(bytes))
        .unwrap())
}
