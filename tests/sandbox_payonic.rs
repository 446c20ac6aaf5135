//! The Payonic emulation seen from outside, as a merchant and its notification endpoint would
//! see it: each function's answer and notification shape, request validation, the API key and
//! TraceApi, the payment rules (declined, no money moved), the Payment API's operations[]
//! history, payouts without idempotency, the health document and outages, life cycle
//! notifications, the request faults and notification faults at their rates, when
//! notifications arrive, and the behaviours of an independent implementation that the
//! configuration switches on (5xx after commit, listing delay, pending listings and
//! notifications, numeric response codes) besides the count of reused TraceApi values. In-process sandbox, provider time 1000× faster; every wait is a
//! bounded poll, and wall-clock assertions are lower bounds or generous upper ones.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use payrun::sandbox::config::{HealthStatus, PayonicGenerate, PayonicPayment, SeedState};
use payrun::sandbox::{Faults, Sandbox, SandboxConfig};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const KEY: &str = "sandbox-payonic-key";

/// A notification as received.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    trace: Option<String>,
    body: Value,
    /// When it arrived.
    at: Instant,
}

/// A local endpoint that records every notification posted to it.
struct Inbox {
    url: String,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Inbox {
    async fn start() -> Inbox {
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let app = axum::Router::new()
            .fallback(
                |State(got): State<Arc<Mutex<Vec<Received>>>>,
                 uri: axum::http::Uri,
                 headers: HeaderMap,
                 body: Bytes| async move {
                    let at = Instant::now();
                    got.lock().unwrap().push(Received {
                        at,
                        path: uri.path().to_string(),
                        trace: headers
                            .get("traceapi")
                            .map(|v| v.to_str().unwrap().to_string()),
                        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                    });
                    "ok"
                },
            )
            .with_state(Arc::clone(&got));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Inbox { url, got }
    }

    fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    fn all(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Those received at `path`.
    fn at_path(&self, path: &str) -> Vec<Received> {
        self.all().into_iter().filter(|r| r.path == path).collect()
    }

    /// Waits (at most 5 s) until `n` notifications came to `path`; returns them.
    async fn for_path(&self, path: &str, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let got = self.at_path(path);
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} notifications at {path}; got {:?}",
                got.len(),
                self.all()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits (at most 5 s) for a notification carrying `responseid`.
    async fn for_response(&self, responseid: &str) -> Received {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(r) = self
                .all()
                .into_iter()
                .find(|r| r.body["responseid"] == responseid)
            {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "no notification for {responseid}; got {:?}",
                self.all()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn seeded(id: &str, mpid: &str, amount: u64, state: SeedState) -> PayonicPayment {
    serde_json::from_value::<PayonicPayment>(json!({
        "paymentid": id, "merchantpaymentid": mpid, "amount": amount, "currency": "DKK",
        "state": match state { SeedState::Authorized => "authorized", SeedState::Captured => "captured" },
        "customer": {"email": "don.johnson@example.com", "firstname": "Don", "surename": "Johnson"},
    }))
    .unwrap()
}

fn config() -> SandboxConfig {
    let mut c = SandboxConfig {
        seed: 7,
        time_scale: 1000.0,
        ..SandboxConfig::default()
    };
    c.payonic.payments = vec![
        seeded("auth1", "order1", 1095, SeedState::Authorized),
        seeded("auth2", "order2", 1000, SeedState::Authorized),
        seeded("auth3", "order3", 1000, SeedState::Authorized),
        seeded("capt1", "order4", 2000, SeedState::Captured),
    ];
    c
}

struct Client {
    sb: Sandbox,
    base: String,
    http: reqwest::Client,
}

impl Client {
    async fn start(config: SandboxConfig) -> Client {
        let sb = Sandbox::start(config, "127.0.0.1:0".parse().unwrap())
            .await
            .expect("the sandbox starts");
        Client {
            base: format!("{}/api", sb.base_url("payonic")),
            sb,
            http: reqwest::Client::new(),
        }
    }

    /// A sandbox whose state lives in `file` too (replayed when it exists).
    async fn start_with_state(config: SandboxConfig, file: &std::path::Path) -> Client {
        let sb = Sandbox::start_with_state(config, "127.0.0.1:0".parse().unwrap(), Some(file))
            .await
            .expect("the sandbox starts on its state file");
        Client {
            base: format!("{}/api", sb.base_url("payonic")),
            sb,
            http: reqwest::Client::new(),
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .timeout(Duration::from_secs(5));
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        if let Some(b) = body {
            r = r.body(b.to_string());
        }
        let resp = r.send().await.expect("an answer");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// POST with the right key.
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let auth = format!("Basic {KEY}");
        self.send(
            reqwest::Method::POST,
            path,
            &[("Authorization", &auth)],
            Some(&body),
        )
        .await
    }

    async fn get(&self, path: &str, body: Option<&Value>) -> (u16, Value) {
        let auth = format!("Basic {KEY}");
        self.send(
            reqwest::Method::GET,
            path,
            &[("Authorization", &auth)],
            body,
        )
        .await
    }

    /// An async function's responseid (asserting the 200 and its shape).
    async fn accepted(&self, path: &str, body: Value) -> String {
        let (status, answer) = self.post(path, body).await;
        assert_eq!(status, 200, "{path}: {answer}");
        let id = answer["responseid"]
            .as_str()
            .expect("a responseid")
            .to_string();
        assert!(is_hex32(&id), "{id}");
        id
    }

    /// The payment as the Payment API notifies it (all operations, with the card image).
    async fn payment_view(&self, id: &str, inbox: &Inbox) -> Value {
        let (status, answer) = self
            .get(
                &format!("/{id}/payment"),
                Some(&json!({"notificationurl": inbox.at("/payment-view"), "gfx": 1})),
            )
            .await;
        assert_eq!(status, 200, "the Payment API answers: {answer}");
        inbox
            .for_response(answer["responseid"].as_str().unwrap())
            .await
            .body
    }

    /// A POST to the sandbox's own `/__sandbox{path}`.
    async fn admin(&self, path: &str) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("http://{}/__sandbox{path}", self.sb.addr))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .expect("an answer");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn ledger(&self) -> Vec<Value> {
        let url = format!("http://{}/__sandbox/ledger", self.sb.addr);
        let v: Value = self
            .http
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .filter(|e| e["provider"] == "payonic")
            .cloned()
            .collect()
    }

    async fn counters(&self) -> Value {
        let url = format!("http://{}/__sandbox/counters", self.sb.addr);
        self.http
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

fn is_hex32(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn keys(v: &Value) -> Vec<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

// ---------------------------------------------------------------------------------------------
// Each function's happy path and notification shape
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_mit_creates_a_payment_and_notifies_it_and_a_repeated_one_creates_none() {
    let c = Client::start(config()).await;
    let inbox = Inbox::start().await;
    let mit = json!({
        "merchantid": "4f4e2451482d441ead8e2862369727d0", "paymentid": "auth1",
        "merchantpaymentid": "eeee2451482d441ead8e28623697eeee", "amount": 1095,
        "currency": "DKK", "reference": "order-12345", "paymenttype": "unscheduled",
        "processor": "finaro", "textonstatement": "cardtokens-io order-12345",
        "note": "monthly", "tags": "taga tagb",
        "customer": {"email": "don.johnson.miami-vice@payonic.com", "firstname": "Don",
                     "surename": "Johnson", "ipaddress": "127.0.0.1"},
        "notificationurl": inbox.at("/mit"),
    });
    let rid = c.accepted("/mit", mit.clone()).await;
    let n = inbox.for_response(&rid).await;
    assert_eq!(n.path, "/mit");
    // L83-93.
    assert_eq!(
        keys(&n.body),
        [
            "responseid",
            "paymentid",
            "newmerchantpaymentid",
            "responsecode",
            "authorizationcode",
            "status",
            "processor",
            "eci",
            "par"
        ]
    );
    assert_eq!(n.body["status"], "approved");
    assert_eq!(n.body["responsecode"], "00");
    assert_eq!(
        n.body["newmerchantpaymentid"],
        "eeee2451482d441ead8e28623697eeee"
    );
    assert_eq!(n.body["par"].as_str().unwrap().len(), 29);
    let paymentid = n.body["paymentid"].as_str().unwrap().to_string();
    assert!(is_hex32(&paymentid) && paymentid != "auth1");

    // The same merchantpaymentid again: the first authorization is answered again.
    let again = c.accepted("/mit", mit).await;
    assert_eq!(again, rid);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let copies: Vec<_> = inbox
        .all()
        .into_iter()
        .filter(|r| r.body["responseid"] == rid.as_str())
        .collect();
    assert_eq!(copies.len(), 2, "its notification is posted again");
    assert_eq!(copies[1].body["paymentid"], paymentid.as_str());
    let p =
        c.sb.payonic
            .payonic
            .payment("eeee2451482d441ead8e28623697eeee")
            .unwrap();
    assert_eq!(p.paymentid, paymentid);
    assert_eq!(p.parentpaymentid.as_deref(), Some("auth1"));
    assert_eq!(p.operations.len(), 1, "no second authorization");
    assert!(
        c.ledger().await.is_empty(),
        "an authorization moves no money"
    );
}

#[tokio::test]
async fn capture_then_refund_notify_and_the_payment_api_shows_the_history() {
    let c = Client::start(config()).await;
    let inbox = Inbox::start().await;
    let trace = "e018fdfb5bda40e4a7e91759c22922fd";
    let auth = format!("Basic {KEY}");
    let (status, answer) = c
        .send(
            reqwest::Method::POST,
            "/order1/capture",
            &[("Authorization", &auth), ("TraceApi", trace)],
            Some(
                &json!({"amount": 1095, "note": "item 17", "tags": "batch-3 item-17",
                        "notificationurl": inbox.at("/capture")}),
            ),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let captured = inbox
        .for_response(answer["responseid"].as_str().unwrap())
        .await;
    // L129-136, with the merchantpaymentid as the path's {paymentid} (L107).
    assert_eq!(
        captured.body,
        json!({"responseid": answer["responseid"], "paymentid": "auth1",
               "merchantpaymentid": "order1", "responsecode": "00",
               "authorizationcode": captured.body["authorizationcode"], "status": "approved"})
    );
    assert_eq!(captured.trace.as_deref(), Some(trace), "TraceApi is echoed");

    let rid = c
        .accepted(
            "/auth1/refund",
            json!({"amount": 500, "note": "partial", "tags": "refund-1",
                   "notificationurl": inbox.at("/refund")}),
        )
        .await;
    assert_eq!(inbox.for_response(&rid).await.body["status"], "approved");

    let (status, answer) = c
        .get(
            "/order1/payment",
            Some(&json!({"notificationurl": inbox.at("/payment")})),
        )
        .await;
    assert_eq!(status, 200, "a GET with a JSON body (L270-276): {answer}");
    let rid = answer["responseid"].as_str().unwrap().to_string();
    let payment = inbox.for_response(&rid).await.body;
    assert_eq!(payment["paymentid"], "auth1");
    assert_eq!(payment["merchantpaymentid"], "order1");
    assert_eq!(payment["amount"], 1095);
    assert_eq!(payment["balance"], 0);
    assert_eq!(payment["customer"]["email"], "don.johnson@example.com");
    let ops = payment["operations"].as_array().unwrap();
    let kinds: Vec<&str> = ops
        .iter()
        .map(|o| o["operationtype"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["authorize", "capture", "refund"]);
    assert_eq!(
        ops[1]["amount"], "1095",
        "amounts are strings in operations[] (L324)"
    );
    assert_eq!(ops[1]["note"], "item 17");
    assert_eq!(
        ops[1]["tags"], "batch-3 item-17",
        "a client recognises its operation"
    );
    assert_eq!(ops[1]["traceapi"], trace);
    assert_eq!(ops[2]["amount"], "500");
    let created = ops[2]["created"].as_str().unwrap();
    assert!(
        regex::Regex::new(r"^\d{4}-\d{2}-\d{2} ([01]?[0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]$")
            .unwrap()
            .is_match(created),
        "L396: {created}"
    );

    // One operation only, by query parameters on the GET, with the card image.
    let opid = ops[2]["operationid"].as_str().unwrap();
    let url = format!(
        "/auth1/payment?notificationurl={}&gfx=1&operationid={opid}",
        inbox.at("/payment2")
    );
    let (status, answer) = c.get(&url, None).await;
    assert_eq!(status, 200, "{answer}");
    let one = inbox
        .for_response(answer["responseid"].as_str().unwrap())
        .await
        .body;
    assert_eq!(one["operations"].as_array().unwrap().len(), 1);
    assert_eq!(one["operations"][0]["operationtype"], "refund");
    assert_eq!(one["gfx"]["mimetype"], "image/png");

    let ledger = c.ledger().await;
    let rows: Vec<(&str, &str)> = ledger
        .iter()
        .map(|e| {
            (
                e["operation"].as_str().unwrap(),
                e["amount"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(rows, [("capture", "10.95"), ("refund", "5.00")]);
    assert_eq!(
        ledger[0]["request_id"], trace,
        "the ledger row quotes TraceApi"
    );
    assert!(ledger[0]["key"].as_str().unwrap().starts_with("auth1/"));
}

#[tokio::test]
async fn a_void_cancels_an_authorization_and_nothing_can_be_captured_after_it() {
    let c = Client::start(config()).await;
    let inbox = Inbox::start().await;
    let rid = c
        .accepted("/auth2/void", json!({"notificationurl": inbox.at("/void")}))
        .await;
    let n = inbox.for_response(&rid).await;
    assert_eq!(n.body["status"], "approved");
    assert_eq!(
        keys(&n.body),
        [
            "responseid",
            "paymentid",
            "merchantpaymentid",
            "responsecode",
            "authorizationcode",
            "status"
        ]
    );
    let rid = c
        .accepted(
            "/auth2/capture",
            json!({"amount": 10, "notificationurl": inbox.at("/capture")}),
        )
        .await;
    let n = inbox.for_response(&rid).await;
    assert_eq!(
        (n.body["status"].as_str(), n.body["responsecode"].as_str()),
        (Some("declined"), Some("12"))
    );
    assert_eq!(n.body["authorizationcode"], "");
    assert!(c.ledger().await.is_empty());
}

#[tokio::test]
async fn a_payout_is_answered_on_the_socket_and_a_repeated_one_pays_again() {
    let c = Client::start(config()).await;
    let body = json!({"amount": 25000, "currency": "EUR", "email": "winner@example.com",
        "firstname": "Don", "surename": "Johnson", "note": "winnings", "tags": "w-1",
        "textonstatement": "www payonic com", "processor": "finaro"});
    let (status, first) = c.post("/capt1/payout", body.clone()).await;
    assert_eq!(status, 200, "{first}");
    // L254-260.
    assert_eq!(
        keys(&first),
        [
            "responseid",
            "responsecode",
            "authorizationcode",
            "status",
            "processor"
        ]
    );
    assert_eq!(first["status"], "approved");
    let (_, second) = c.post("/order4/payout", body).await;
    assert_eq!(second["status"], "approved");
    assert_ne!(first["responseid"], second["responseid"]);
    let ledger = c.ledger().await;
    assert_eq!(ledger.len(), 2, "no idempotency key: paid twice");
    assert!(
        ledger.iter().all(|e| e["operation"] == "payout"
            && e["amount"] == "250.00"
            && e["currency"] == "EUR")
    );
    assert_ne!(ledger[0]["key"], ledger[1]["key"]);

    let (_, declined) = c
        .post("/capt1/payout", json!({"amount": 1051, "currency": "EUR"}))
        .await;
    assert_eq!(
        (
            declined["status"].as_str(),
            declined["responsecode"].as_str()
        ),
        (Some("declined"), Some("51"))
    );
    assert_eq!(c.ledger().await.len(), 2);
}

// ---------------------------------------------------------------------------------------------
// The rules: declined, recorded, no money moved
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn operations_that_break_the_rules_are_declined_and_move_no_money() {
    let c = Client::start(config()).await;
    let inbox = Inbox::start().await;
    let url = inbox.at("/n");
    let outcome = async |path: &str, body: Value| {
        let rid = c.accepted(path, body).await;
        let n = inbox.for_response(&rid).await.body;
        format!(
            "{} {}",
            n["status"].as_str().unwrap(),
            n["responsecode"].as_str().unwrap()
        )
    };
    // auth3: 1000 authorized.
    assert_eq!(
        outcome(
            "/auth3/capture",
            json!({"amount": 600, "notificationurl": url})
        )
        .await,
        "approved 00"
    );
    assert_eq!(
        outcome(
            "/auth3/capture",
            json!({"amount": 401, "notificationurl": url})
        )
        .await,
        "declined 13",
        "beyond the authorized amount"
    );
    assert_eq!(
        outcome(
            "/auth3/capture",
            json!({"amount": 400, "notificationurl": url})
        )
        .await,
        "approved 00"
    );
    assert_eq!(
        outcome(
            "/auth3/refund",
            json!({"amount": 1001, "notificationurl": url})
        )
        .await,
        "declined 13",
        "beyond what is captured"
    );
    assert_eq!(
        outcome("/auth3/void", json!({"notificationurl": url})).await,
        "declined 12",
        "after a capture"
    );
    // capt1: 2000 captured.
    assert_eq!(
        outcome(
            "/capt1/refund",
            json!({"amount": 1500, "notificationurl": url})
        )
        .await,
        "approved 00"
    );
    assert_eq!(
        outcome(
            "/capt1/refund",
            json!({"amount": 501, "notificationurl": url})
        )
        .await,
        "declined 13",
        "refunded beyond captured"
    );
    assert_eq!(
        outcome(
            "/capt1/capture",
            json!({"amount": 1, "notificationurl": url})
        )
        .await,
        "declined 13",
        "already captured in full"
    );
    // auth2: nothing captured.
    assert_eq!(
        outcome(
            "/auth2/refund",
            json!({"amount": 1, "notificationurl": url})
        )
        .await,
        "declined 12"
    );
    assert_eq!(
        outcome(
            "/auth2/capture",
            json!({"amount": 5, "notificationurl": url})
        )
        .await,
        "declined 05",
        "mock trigger"
    );

    let rows: Vec<String> = c
        .ledger()
        .await
        .iter()
        .map(|e| {
            format!(
                "{} {} {}",
                e["payment_id"].as_str().unwrap(),
                e["operation"].as_str().unwrap(),
                e["amount"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            "auth3 capture 6.00",
            "auth3 capture 4.00",
            "capt1 refund 15.00"
        ]
    );
    let counters = c.counters().await;
    assert_eq!(
        counters["requests"]["POST /payonic/api/{paymentid}/capture 200"], 5,
        "counted per endpoint, not per payment"
    );
    let events = &counters["events"];
    assert_eq!(events["payonic.declined.capture"], 3);
    assert_eq!(events["payonic.declined.refund"], 3);
    assert_eq!(events["payonic.declined.void"], 1);
    let p = c.sb.payonic.payonic.payment("auth3").unwrap();
    assert_eq!(
        p.operations.iter().filter(|o| !o.approved()).count(),
        3,
        "declines are recorded"
    );
}

// ---------------------------------------------------------------------------------------------
// Validation, authentication, TraceApi
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn bad_requests_are_400_naming_their_field() {
    let c = Client::start(config()).await;
    let url = "http://127.0.0.1:9/n";
    let mit = json!({"merchantid": "m1", "paymentid": "auth1", "merchantpaymentid": "new1",
        "amount": 100, "currency": "DKK", "notificationurl": url});
    let with = |k: &str, v: Value| {
        let mut b = mit.clone();
        b[k] = v;
        b
    };
    let without = |k: &str| {
        let mut b = mit.clone();
        b.as_object_mut().unwrap().remove(k);
        b
    };
    for (path, body, field) in [
        (
            "/auth1/capture",
            json!({"amount": 10.95, "notificationurl": url}),
            "amount",
        ),
        (
            "/auth1/capture",
            json!({"amount": "1095", "notificationurl": url}),
            "amount",
        ),
        ("/auth1/capture", json!({"notificationurl": url}), "amount"),
        ("/auth1/refund", json!({"amount": 1}), "notificationurl"),
        (
            "/auth1/refund",
            json!({"amount": 1, "notificationurl": "mailto:x@y.z"}),
            "notificationurl",
        ),
        (
            "/auth1/payout",
            json!({"amount": 1, "currency": "EURO"}),
            "currency",
        ),
        (
            "/auth1/payout",
            json!({"amount": 1, "currency": "EUR", "email": "x@y"}),
            "email",
        ),
        (
            "/auth1/payout",
            json!({"amount": 1, "currency": "EUR", "textonstatement": "www.payonic.com"}),
            "textonstatement",
        ),
        ("/mit", with("reference", json!("order_1")), "reference"),
        (
            "/mit",
            with("merchantpaymentid", json!("a-b")),
            "merchantpaymentid",
        ),
        (
            "/mit",
            with("amount", json!(1_000_000_000_000u64)),
            "amount",
        ),
        ("/mit", without("currency"), "currency"),
        ("/mit", without("notificationurl"), "notificationurl"),
        (
            "/auth1/payment",
            json!({"gfx": 2, "notificationurl": url}),
            "gfx",
        ),
    ] {
        let (status, answer) = c.post(path, body.clone()).await;
        let (status, answer) = if path.ends_with("/payment") {
            c.get(path, Some(&body)).await
        } else {
            (status, answer)
        };
        assert_eq!(status, 400, "{path} {body}: {answer}");
        assert_eq!(answer["field"], field, "{path} {body}: {answer}");
        assert!(answer["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let (status, answer) = c
        .send(
            reqwest::Method::POST,
            "/auth1/capture",
            &[("Authorization", &format!("Basic {KEY}"))],
            None,
        )
        .await;
    assert_eq!(status, 400, "an empty body: {answer}");
    let (status, answer) = c
        .post(
            "/nosuchpayment/capture",
            json!({"amount": 1, "notificationurl": url}),
        )
        .await;
    assert_eq!((status, answer["field"].as_str()), (404, Some("paymentid")));
    let (status, _) = c
        .post("/mit", with("paymentid", json!("nosuchparent")))
        .await;
    assert_eq!(status, 404, "an MIT needs its parent payment");
    assert!(c.ledger().await.is_empty());
}

#[tokio::test]
async fn the_api_key_is_required_and_trace_api_must_be_a_uuid() {
    let c = Client::start(config()).await;
    let body = json!({"amount": 1, "currency": "EUR"});
    for auth in [
        None,
        Some("Basic wrong-key".to_string()),
        Some(KEY.to_string()),
        Some(format!("Bearer {KEY}")),
        Some(format!("Basic {KEY}x")),
    ] {
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        let (status, answer) = c
            .send(
                reqwest::Method::POST,
                "/auth1/payout",
                &headers,
                Some(&body),
            )
            .await;
        assert_eq!(status, 401, "{auth:?}: {answer}");
        assert_eq!(answer["field"], "Authorization");
        let (status, _) = c
            .send(reqwest::Method::GET, "/health", &headers, None)
            .await;
        assert_eq!(status, 401, "health too: {auth:?}");
    }
    let auth = format!("Basic {KEY}");
    for (trace, expected) in [
        ("e018fdfb5bda40e4a7e91759c22922fd", 200),
        ("e018fdfb-5bda-40e4-a7e9-1759c22922fd", 200),
        ("not-a-uuid", 400),
        ("e018fdfb5bda40e4a7e91759c22922f", 400),
        ("g018fdfb5bda40e4a7e91759c22922fd", 400),
    ] {
        let (status, answer) = c
            .send(
                reqwest::Method::POST,
                "/auth1/payout",
                &[("Authorization", &auth), ("TraceApi", trace)],
                Some(&body),
            )
            .await;
        assert_eq!(status, expected, "{trace}: {answer}");
        if expected == 400 {
            assert_eq!(answer["field"], "TraceApi");
        }
    }
    assert_eq!(c.ledger().await.len(), 2);
}

#[tokio::test]
async fn the_health_document_reports_a_configured_error() {
    let mut cfg = config();
    cfg.payonic.health.insert(
        "capture".into(),
        HealthStatus {
            status: "error".into(),
            msg: "No response received from the API request.".into(),
        },
    );
    let c = Client::start(cfg).await;
    let (status, doc) = c.get("/health", None).await;
    assert_eq!(status, 200);
    let apis: Vec<(String, String)> = doc["api"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["api"].as_str().unwrap().into(),
                a["status"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        apis,
        [
            ("api.cit.payonic.com", "ok"),
            ("api.mit.payonic.com", "ok"),
            ("api.capture.payonic.com", "error"),
            ("api.refund.payonic.com", "ok"),
            ("api.payout.payonic.com", "ok"),
            ("api.payment.payonic.com", "ok"),
        ]
        .map(|(a, s)| (a.to_string(), s.to_string()))
    );
    assert_eq!(
        doc["api"][2]["msg"],
        "No response received from the API request."
    );
    assert_eq!(doc["app.payonic.com"]["status"], "ok");
    assert_eq!(doc["www.payonic.com"]["status"], "ok");
}

#[test]
fn an_unknown_health_entry_is_a_config_error() {
    let mut cfg = config();
    cfg.payonic.health.insert(
        "capturer".into(),
        HealthStatus {
            status: "ok".into(),
            msg: String::new(),
        },
    );
    assert!(cfg.check().unwrap_err().contains("capturer"));
}

#[test]
fn the_documented_sandbox_config_loads_with_its_payonic_section() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("batches/sandbox.yaml");
    let cfg = SandboxConfig::load(&path).expect("batches/sandbox.yaml loads");
    assert_eq!(cfg.payonic.api_key, KEY);
    assert_eq!(cfg.payonic.payments.len(), 1);
    assert_eq!(cfg.payonic.generate.as_ref().unwrap().count, 1000);
}

// ---------------------------------------------------------------------------------------------
// Notification faults
// ---------------------------------------------------------------------------------------------

/// Captures `n` generated payments once each; returns how many notifications each responseid
/// got, in request order.
async fn captures_under_faults(seed: u64, n: u64) -> (Vec<usize>, Value) {
    let cfg = generated(
        seed,
        n,
        Faults {
            webhook_drop_rate: 0.2,
            webhook_duplicate_rate: 0.2,
            webhook_delay_rate: 0.1,
            webhook_reorder_rate: 0.1,
            ..Faults::default()
        },
    );
    let c = Client::start(cfg).await;
    let inbox = Inbox::start().await;
    let mut rids = Vec::new();
    for i in 1..=n {
        rids.push(
            c.accepted(
                &format!("/gen{i:08}/capture"),
                json!({"amount": 1000, "notificationurl": inbox.at("/n")}),
            )
            .await,
        );
    }
    // Every send is due within notify_delay_max (2 ms) + 10 steps + 3 steps + half a step.
    let counters = loop {
        let counters = c.counters().await;
        let ev = &counters["events"];
        let sent = ev["payonic.notifications.sent"].as_u64().unwrap_or(0);
        let dropped = ev["payonic.notifications.dropped"].as_u64().unwrap_or(0);
        let dup = ev["payonic.notifications.duplicated"].as_u64().unwrap_or(0);
        if sent == n - dropped + dup {
            break counters;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let got = inbox.all();
    let per: Vec<usize> = rids
        .iter()
        .map(|r| {
            got.iter()
                .filter(|g| g.body["responseid"] == r.as_str())
                .count()
        })
        .collect();
    assert_eq!(
        c.ledger().await.len() as u64,
        n,
        "every capture moved money once"
    );
    (per, counters["events"].clone())
}

#[tokio::test]
async fn notifications_are_dropped_and_duplicated_at_their_rates_reproducibly() {
    let started = Instant::now();
    let n = 200;
    let (per, events) = tokio::time::timeout(Duration::from_secs(30), captures_under_faults(3, n))
        .await
        .expect("bounded in time");
    let dropped = per.iter().filter(|&&k| k == 0).count();
    let twice = per.iter().filter(|&&k| k == 2).count();
    assert!(per.iter().all(|&k| k <= 2));
    eprintln!("dropped {dropped}, duplicated {twice} of {n}; events {events}");
    assert_eq!(events["payonic.notifications.dropped"], dropped as u64);
    assert_eq!(events["payonic.notifications.duplicated"], twice as u64);
    // 20 % dropped; 20 % of the rest duplicated (16 % of all).
    assert!((25..=55).contains(&dropped), "dropped {dropped} of {n}");
    assert!((18..=48).contains(&twice), "duplicated {twice} of {n}");
    assert!(events["payonic.notifications.delayed"].as_u64().unwrap() > 0);

    let (again, _) = captures_under_faults(3, n).await;
    assert_eq!(per, again, "the same seed, the same faults");
    let (other, _) = captures_under_faults(4, n).await;
    assert_ne!(per, other, "another seed, other faults");
    eprintln!("three runs of {n} in {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// Health that bites: an API reported "error" is down
// ---------------------------------------------------------------------------------------------

fn operation_types(payment: &Value) -> Vec<String> {
    payment["operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["operationtype"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_capture_while_the_capture_api_is_down_is_503_and_changes_nothing() {
    let mut cfg = config();
    cfg.payonic.health.insert(
        "capture".into(),
        HealthStatus {
            status: "error".into(),
            msg: "No response received from the API request.".into(),
        },
    );
    let c = Client::start(cfg).await;
    let inbox = Inbox::start().await;
    let (status, answer) = c
        .post(
            "/order1/capture",
            json!({"amount": 1095, "notificationurl": inbox.at("/capture")}),
        )
        .await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(
        answer,
        json!({"error": "No response received from the API request.", "field": ""})
    );

    // The refund API is another host: it still works.
    let rid = c
        .accepted(
            "/capt1/refund",
            json!({"amount": 500, "notificationurl": inbox.at("/refund")}),
        )
        .await;
    assert_eq!(inbox.for_response(&rid).await.body["status"], "approved");

    let payment = c.payment_view("auth1", &inbox).await;
    assert_eq!(operation_types(&payment), ["authorize"], "{payment}");
    assert_eq!(payment["balance"], 1095, "nothing captured");
    // A capture's notification is due within notify_delay_max (2 ms here); the refund's, sent
    // after it, came already.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        inbox.at_path("/capture").is_empty(),
        "no capture notification: {:?}",
        inbox.all()
    );
    let rows: Vec<(String, String)> = c
        .ledger()
        .await
        .iter()
        .map(|e| {
            (
                e["payment_id"].as_str().unwrap().into(),
                e["operation"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(rows, [("capt1".to_string(), "refund".to_string())]);
    let counters = c.counters().await;
    assert_eq!(
        counters["requests"]["POST /payonic/api/{paymentid}/capture 503"],
        1
    );
    assert_eq!(counters["events"]["payonic.unavailable.capture"], 1);
    let p = c.sb.payonic.payonic.payment("auth1").unwrap();
    assert_eq!(
        p.operations.len(),
        1,
        "not even a declined capture is recorded"
    );
}

#[tokio::test]
async fn each_function_is_down_exactly_when_the_api_serving_it_reports_error() {
    // The host of each end-point (L34, L107, L147, L187, L227, L270): void is on api.refund.
    let functions = ["mit", "capture", "refund", "void", "payout", "payment"];
    fn served_by(f: &str) -> &str {
        if f == "void" { "refund" } else { f }
    }
    for down in [
        "cit", "mit", "capture", "refund", "payout", "payment", "app", "www",
    ] {
        let mut cfg = config();
        cfg.payonic.health.insert(
            down.into(),
            HealthStatus {
                status: "error".into(),
                msg: String::new(),
            },
        );
        let c = Client::start(cfg).await;
        let url = "http://127.0.0.1:9/n";
        for f in functions {
            let (status, answer) = match f {
                "mit" => {
                    c.post(
                        "/mit",
                        json!({"merchantid": "m1", "paymentid": "auth1",
                               "merchantpaymentid": "new1", "amount": 100,
                               "currency": "DKK", "notificationurl": url}),
                    )
                    .await
                }
                "capture" => {
                    c.post(
                        "/auth1/capture",
                        json!({"amount": 100, "notificationurl": url}),
                    )
                    .await
                }
                "refund" => {
                    c.post(
                        "/capt1/refund",
                        json!({"amount": 100, "notificationurl": url}),
                    )
                    .await
                }
                "void" => c.post("/auth2/void", json!({"notificationurl": url})).await,
                "payout" => {
                    c.post("/capt1/payout", json!({"amount": 100, "currency": "EUR"}))
                        .await
                }
                _ => {
                    c.get("/auth3/payment", Some(&json!({"notificationurl": url})))
                        .await
                }
            };
            if served_by(f) == down {
                assert_eq!(status, 503, "{f} with {down} down: {answer}");
                assert_eq!(
                    answer,
                    json!({"error": "No response received from the API request.", "field": ""}),
                    "an empty msg answers the document's (L432)"
                );
            } else {
                assert_eq!(status, 200, "{f} with {down} down: {answer}");
            }
        }
        // The Health API keeps answering, and reports it.
        let (status, doc) = c.get("/health", None).await;
        assert_eq!(status, 200);
        let reported: Vec<&str> = doc["api"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["status"] == "error")
            .map(|a| a["api"].as_str().unwrap())
            .collect();
        let host = format!("api.{down}.payonic.com");
        match down {
            "app" | "www" => {
                assert!(reported.is_empty());
                assert_eq!(doc[format!("{down}.payonic.com")]["status"], "error");
            }
            _ => assert_eq!(reported, [host.as_str()]),
        }
        // Down means down, whoever asks: the key is not even looked at (a choice, see health.rs).
        if down == "capture" {
            let (status, _) = c
                .send(
                    reqwest::Method::POST,
                    "/auth1/capture",
                    &[("Authorization", "Basic wrong-key")],
                    Some(&json!({"amount": 1, "notificationurl": url})),
                )
                .await;
            assert_eq!(status, 503);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Life cycle management (L461-469)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_life_cycle_update_changes_the_card_and_notifies_the_back_office_url() {
    let inbox = Inbox::start().await;
    let mut cfg = config();
    cfg.payonic.lifecycle_url = Some(inbox.at("/lifecycle"));
    let c = Client::start(cfg).await;
    let before = c.payment_view("auth1", &inbox).await;
    assert_eq!(
        (
            &before["last4"],
            &before["Expiry date"],
            &before["gfx"]["last4"]
        ),
        (&json!("4242"), &json!("12/2030"), &json!("4242"))
    );

    // By merchantpaymentid, as the functions accept it.
    let (status, answer) = c.admin("/payonic/lifecycle/order1").await;
    assert_eq!(status, 200, "{answer}");
    let got = inbox.for_path("/lifecycle", 1).await;
    // L466-469, exactly.
    assert_eq!(
        got[0].body,
        json!({"paymentid": "auth1", "merchantpaymentid": "order1"})
    );
    assert_eq!(keys(&got[0].body), ["paymentid", "merchantpaymentid"]);
    assert_eq!(got[0].trace, None, "no merchant request, no TraceApi");

    // What the merchant then fetches (L464).
    let after = c.payment_view("auth1", &inbox).await;
    let last4 = after["last4"].as_str().unwrap();
    assert!(
        last4.len() == 4 && last4.bytes().all(|b| b.is_ascii_digit()),
        "{last4}"
    );
    assert_ne!(last4, "4242", "a new PAN");
    assert_eq!(answer["last4"], last4, "the trigger answers the new card");
    assert_eq!(after["Expiry date"], "12/2033");
    assert_eq!(
        (
            &after["gfx"]["last4"],
            &after["gfx"]["expyear"],
            &after["gfx"]["expmonth"]
        ),
        (&json!(last4), &json!(2033), &json!(12))
    );
    assert_eq!(
        operation_types(&after),
        ["authorize"],
        "the payment is otherwise as it was"
    );
    assert_eq!(after["balance"], 1095);
    let other = c.payment_view("auth2", &inbox).await;
    assert_eq!(other["last4"], "4242", "other payments keep their card");

    // An MIT charges the stored card: the updated one.
    let rid = c
        .accepted(
            "/mit",
            json!({"merchantid": "m1", "paymentid": "auth1", "merchantpaymentid": "mit1",
                   "amount": 100, "currency": "DKK", "notificationurl": inbox.at("/mit")}),
        )
        .await;
    inbox.for_response(&rid).await;
    assert_eq!(c.payment_view("mit1", &inbox).await["last4"], last4);

    // A second update: another card, notified again; nothing more than that was sent.
    let (status, second) = c.admin("/payonic/lifecycle/auth1").await;
    assert_eq!(status, 200);
    assert_ne!(second["last4"], last4);
    assert_eq!(second["expyear"], 2036);
    let got = inbox.for_path("/lifecycle", 2).await;
    assert_eq!(got[0].body, got[1].body);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        inbox.at_path("/lifecycle").len(),
        2,
        "one notification per update"
    );

    let (status, answer) = c.admin("/payonic/lifecycle/nosuchpayment").await;
    assert_eq!((status, answer["field"].as_str()), (404, Some("paymentid")));
    assert!(c.ledger().await.is_empty(), "a card update moves no money");
    let counters = c.counters().await;
    assert_eq!(
        counters["requests"]["POST /__sandbox/payonic/lifecycle/{paymentid} 200"],
        2
    );
    assert_eq!(counters["events"]["payonic.lifecycle.updated"], 2);

    // The same seed updates the card the same way.
    let mut cfg = config();
    cfg.payonic.lifecycle_url = Some(inbox.at("/lifecycle-again"));
    let again = Client::start(cfg).await;
    let (_, same) = again.admin("/payonic/lifecycle/auth1").await;
    assert_eq!(same["last4"], last4);
}

#[tokio::test]
async fn a_life_cycle_update_without_a_lifecycle_url_is_409_and_changes_nothing() {
    let c = Client::start(config()).await;
    let inbox = Inbox::start().await;
    let (status, answer) = c.admin("/payonic/lifecycle/auth1").await;
    assert_eq!(status, 409, "{answer}");
    let msg = answer["error"].as_str().unwrap();
    assert!(msg.contains("payonic.lifecycle_url"), "{msg}");
    assert!(msg.contains("hint"), "{msg}");
    assert_eq!(c.payment_view("auth1", &inbox).await["last4"], "4242");
}

#[tokio::test]
async fn life_cycle_notifications_take_the_webhook_faults() {
    let inbox = Inbox::start().await;
    let mut cfg = config();
    cfg.payonic.lifecycle_url = Some(inbox.at("/lifecycle"));
    cfg.faults.webhook_duplicate_rate = 1.0;
    let c = Client::start(cfg).await;
    let (status, _) = c.admin("/payonic/lifecycle/auth1").await;
    assert_eq!(status, 200);
    let got = inbox.for_path("/lifecycle", 2).await;
    assert_eq!(got[0].body, got[1].body, "duplicated");

    c.sb.set_faults(Faults {
        webhook_drop_rate: 1.0,
        ..Faults::default()
    });
    let (status, dropped) = c.admin("/payonic/lifecycle/auth2").await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        inbox.at_path("/lifecycle").len(),
        2,
        "dropped: {:?}",
        inbox.all()
    );
    let events = &c.counters().await["events"];
    assert_eq!(events["payonic.notifications.duplicated"], 1);
    assert_eq!(events["payonic.notifications.dropped"], 1);
    c.sb.set_faults(Faults::default());
    assert_eq!(
        c.payment_view("auth2", &inbox).await["last4"],
        dropped["last4"],
        "the card changed although the notification was lost"
    );
}

#[test]
fn a_bad_lifecycle_url_is_a_config_error() {
    for url in ["not a url", "ftp://example.com/x", "/relative/path"] {
        let mut cfg = config();
        cfg.payonic.lifecycle_url = Some(url.into());
        let e = cfg.check().unwrap_err();
        assert!(
            e.contains("payonic.lifecycle_url") && e.contains(url),
            "{e}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sandbox.yaml");
    std::fs::write(
        &path,
        "payonic:\n  lifecycle_url: http://127.0.0.1:8787/lifecycle\n",
    )
    .unwrap();
    let cfg = SandboxConfig::load(&path).expect("a lifecycle_url loads");
    assert_eq!(
        cfg.payonic.lifecycle_url.as_deref(),
        Some("http://127.0.0.1:8787/lifecycle")
    );
    std::fs::write(&path, "payonic:\n  lifecycle_url: 12\n").unwrap();
    let e = SandboxConfig::load(&path).unwrap_err().to_string();
    assert!(e.contains("lifecycle_url"), "{e}");
    std::fs::write(&path, "payonic:\n  lifecycle_uri: http://127.0.0.1:1/x\n").unwrap();
    let e = SandboxConfig::load(&path).unwrap_err().to_string();
    assert!(e.contains("lifecycle_uri"), "unknown keys stay errors: {e}");
}

// ---------------------------------------------------------------------------------------------
// Request faults on Payonic requests (as tests/sandbox_faults.rs does for Paysend)
// ---------------------------------------------------------------------------------------------

/// What a client saw of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Answered(u16),
    /// The connection closed without an answer.
    Closed,
    /// The client's own timeout fired first.
    TimedOut,
}

/// One capture request and what its client saw.
#[derive(Debug, Clone)]
struct Sent {
    paymentid: String,
    outcome: Outcome,
    started: Instant,
    elapsed: Duration,
    responseid: Option<String>,
}

/// `config()` plus `n` authorized payments `gen00000001…` of EUR 10.00, under `faults`.
fn generated(seed: u64, n: u64, faults: Faults) -> SandboxConfig {
    let mut cfg = config();
    cfg.seed = seed;
    cfg.payonic.generate = Some(PayonicGenerate {
        prefix: "gen".into(),
        count: n,
        amount: 1000,
        currency: "EUR".into(),
        state: SeedState::Authorized,
    });
    cfg.faults = faults;
    cfg
}

fn generated_id(i: u64) -> String {
    format!("gen{i:08}")
}

/// Captures each generated payment in full once, at most `concurrency` in flight, with a
/// patient client (10 s); the outcomes in payment order.
async fn capture_each(c: &Client, inbox: &Inbox, n: u64, concurrency: usize) -> Vec<Sent> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut set = tokio::task::JoinSet::new();
    for i in 1..=n {
        let permit = Arc::clone(&permits).acquire_owned().await.unwrap();
        let paymentid = generated_id(i);
        let url = format!("{}/{paymentid}/capture", c.base);
        let body = json!({"amount": 1000, "notificationurl": inbox.at("/n")}).to_string();
        let http = http.clone();
        set.spawn(async move {
            let started = Instant::now();
            let r = http
                .post(url)
                .header("Authorization", format!("Basic {KEY}"))
                .body(body)
                .send()
                .await;
            let (outcome, text) = match r {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    match resp.text().await {
                        Ok(t) => (Outcome::Answered(status), t),
                        Err(e) if e.is_timeout() => (Outcome::TimedOut, String::new()),
                        Err(_) => (Outcome::Closed, String::new()),
                    }
                }
                Err(e) if e.is_timeout() => (Outcome::TimedOut, String::new()),
                Err(_) => (Outcome::Closed, String::new()),
            };
            let elapsed = started.elapsed();
            drop(permit);
            let responseid = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["responseid"].as_str().map(str::to_string));
            (
                i,
                Sent {
                    paymentid,
                    outcome,
                    started,
                    elapsed,
                    responseid,
                },
            )
        });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        out.push(r.expect("a sender task"));
    }
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, s)| s).collect()
}

/// How many capture operations the Payment API shows for each payment (faults off first: the
/// Payment API's own requests and notifications must not meet them).
async fn captures_shown(c: &Client, inbox: &Inbox, sent: &[Sent]) -> Vec<usize> {
    c.sb.set_faults(Faults::default());
    // Every operation committed so far is processed within notify_delay_max (2 ms here).
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut shown = Vec::new();
    for s in sent {
        let p = c.payment_view(&s.paymentid, inbox).await;
        shown.push(
            operation_types(&p)
                .iter()
                .filter(|t| *t == "capture")
                .count(),
        );
    }
    shown
}

/// The payments with a capture row in the ledger, and how many rows each.
async fn captures_paid(c: &Client) -> std::collections::HashMap<String, usize> {
    let mut m = std::collections::HashMap::new();
    for e in c.ledger().await {
        assert_eq!(e["operation"], "capture", "{e}");
        *m.entry(e["payment_id"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    m
}

/// `count` of `n` is within half of `rate × n` either way: a seeded draw is fixed, so this is
/// only a check that the rate is applied, not a statistical test.
fn about(what: &str, count: usize, n: usize, rate: f64) {
    let expected = rate * n as f64;
    eprintln!("{what}: {count} of {n} (configured {rate}, expected about {expected})");
    assert!(
        (count as f64) >= expected * 0.5 && (count as f64) <= expected * 1.5,
        "{what}: {count} of {n}, configured rate {rate}"
    );
}

/// Runs a test body with an overall bound.
async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("the test finishes within 60 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payonic_error_5xx_rate_answers_500_and_processes_nothing() {
    bounded(async {
        let n = 200;
        let c = Client::start(generated(
            21,
            n,
            Faults {
                error_5xx_rate: 0.2,
                ..Faults::default()
            },
        ))
        .await;
        let inbox = Inbox::start().await;
        let sent = capture_each(&c, &inbox, n, 8).await;
        let failed: Vec<&Sent> = sent
            .iter()
            .filter(|s| s.outcome == Outcome::Answered(500))
            .collect();
        assert!(
            sent.iter()
                .all(|s| matches!(s.outcome, Outcome::Answered(200 | 500))),
            "answered 200 or 500: {sent:?}"
        );
        about("HTTP 500", failed.len(), sent.len(), 0.2);

        let shown = captures_shown(&c, &inbox, &sent).await;
        let paid = captures_paid(&c).await;
        let notified: std::collections::HashSet<String> = inbox
            .at_path("/n")
            .iter()
            .map(|r| r.body["paymentid"].as_str().unwrap().to_string())
            .collect();
        for (s, shown) in sent.iter().zip(&shown) {
            let ok = s.outcome == Outcome::Answered(200);
            assert_eq!(*shown, ok as usize, "{}: {:?}", s.paymentid, s.outcome);
            assert_eq!(paid.get(&s.paymentid).copied(), ok.then_some(1), "{s:?}");
            assert_eq!(notified.contains(&s.paymentid), ok, "{s:?}");
        }
        let counters = c.counters().await;
        assert_eq!(
            counters["requests"]["POST /payonic/api/{paymentid}/capture 500"],
            failed.len() as u64
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payonic_timeout_rate_holds_the_connection_then_closes_it_processing_nothing() {
    bounded(async {
        let n = 200;
        let after = Duration::from_millis(300);
        let c = Client::start(generated(
            22,
            n,
            Faults {
                timeout_rate: 0.2,
                timeout_after: Some(after),
                ..Faults::default()
            },
        ))
        .await;
        let inbox = Inbox::start().await;
        let sent = capture_each(&c, &inbox, n, 16).await;
        let held: Vec<&Sent> = sent
            .iter()
            .filter(|s| s.outcome != Outcome::Answered(200))
            .collect();
        about("timed out", held.len(), sent.len(), 0.2);
        for s in &held {
            assert_eq!(s.outcome, Outcome::Closed, "closed unanswered: {s:?}");
            assert!(
                s.elapsed >= after,
                "{}: held only {:?}",
                s.paymentid,
                s.elapsed
            );
        }
        let shown = captures_shown(&c, &inbox, &sent).await;
        let paid = captures_paid(&c).await;
        for (s, shown) in sent.iter().zip(&shown) {
            let ok = s.outcome == Outcome::Answered(200);
            assert_eq!(*shown, ok as usize, "{}: {:?}", s.paymentid, s.outcome);
            assert_eq!(paid.get(&s.paymentid).copied(), ok.then_some(1), "{s:?}");
        }
        assert_eq!(paid.len(), n as usize - held.len());
    })
    .await;
}

/// Every capture of `sent` was processed once, answered or not: listed in the Payment API's
/// history, paid once in the ledger; and each of `unanswered` was notified.
async fn processed_once_each(c: &Client, inbox: &Inbox, sent: &[Sent], unanswered: &[&Sent]) {
    let shown = captures_shown(c, inbox, sent).await;
    assert!(shown.iter().all(|&k| k == 1), "{shown:?}");
    let paid = captures_paid(c).await;
    assert_eq!(paid.len(), sent.len());
    assert!(paid.values().all(|&k| k == 1));
    let notified: std::collections::HashSet<String> = inbox
        .at_path("/n")
        .iter()
        .map(|r| r.body["paymentid"].as_str().unwrap().to_string())
        .collect();
    for s in unanswered {
        assert!(
            notified.contains(&s.paymentid),
            "{}: no notification",
            s.paymentid
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payonic_drop_after_commit_processes_the_operation_but_never_answers() {
    bounded(async {
        let n = 200;
        let c = Client::start(generated(
            25,
            n,
            Faults {
                drop_after_commit_rate: 0.2,
                ..Faults::default()
            },
        ))
        .await;
        let inbox = Inbox::start().await;
        let sent = capture_each(&c, &inbox, n, 8).await;
        let dropped: Vec<&Sent> = sent
            .iter()
            .filter(|s| s.outcome != Outcome::Answered(200))
            .collect();
        about("dropped after commit", dropped.len(), sent.len(), 0.2);
        assert!(
            dropped.iter().all(|s| s.outcome == Outcome::Closed),
            "closed unanswered: {dropped:?}"
        );
        // The in-doubt case: every capture was processed, answered or not — in the Payment
        // API's history, in the ledger, and notified.
        processed_once_each(&c, &inbox, &sent, &dropped).await;
        let counters = c.counters().await;
        assert_eq!(counters["dropped_after_commit"], dropped.len() as u64);
        assert_eq!(
            counters["requests"]["POST /payonic/api/{paymentid}/capture dropped"],
            dropped.len() as u64
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payonic_latency_is_added_between_latency_min_and_max() {
    bounded(async {
        let n = 200;
        let (lo, hi) = (Duration::from_millis(50), Duration::from_millis(150));
        let c = Client::start(generated(
            24,
            n,
            Faults {
                latency_min: Some(lo),
                latency_max: Some(hi),
                ..Faults::default()
            },
        ))
        .await;
        let inbox = Inbox::start().await;
        let sent = capture_each(&c, &inbox, n, 16).await;
        assert!(sent.iter().all(|s| s.outcome == Outcome::Answered(200)));
        let mut took: Vec<Duration> = sent.iter().map(|s| s.elapsed).collect();
        took.sort();
        let mean = took.iter().sum::<Duration>() / took.len() as u32;
        eprintln!(
            "latency: min {:?}, median {:?}, mean {mean:?}, max {:?}",
            took[0],
            took[took.len() / 2],
            took[took.len() - 1]
        );
        // Lower bounds hold however loaded the machine is; the upper one is generous.
        assert!(took[0] >= lo, "fastest {:?} below latency_min", took[0]);
        assert!(
            mean >= Duration::from_millis(85),
            "mean {mean:?}: uniform 50..150 ms averages 100 ms"
        );
        let slow = took
            .iter()
            .filter(|&&t| t >= Duration::from_millis(125))
            .count();
        assert!(
            slow >= n as usize / 10,
            "only {slow} of {n} took 125 ms or more: the draws spread up to latency_max"
        );
        assert!(
            took[took.len() / 2] <= hi + Duration::from_secs(1),
            "median {:?} far above latency_max",
            took[took.len() / 2]
        );
    })
    .await;
}

/// Each generated payment's fate under 5xx, timeout and drop-after-commit faults: "500",
/// "timeout" (closed, nothing processed), "dropped" (closed, processed) or "ok".
async fn request_fates(seed: u64, n: u64) -> Vec<&'static str> {
    let c = Client::start(generated(
        seed,
        n,
        Faults {
            error_5xx_rate: 0.15,
            timeout_rate: 0.1,
            timeout_after: Some(Duration::from_millis(200)),
            drop_after_commit_rate: 0.15,
            ..Faults::default()
        },
    ))
    .await;
    let inbox = Inbox::start().await;
    let sent = capture_each(&c, &inbox, n, 16).await;
    let paid = captures_paid(&c).await;
    sent.iter()
        .map(|s| match (s.outcome, paid.get(&s.paymentid)) {
            (Outcome::Answered(500), None) => "500",
            (Outcome::Closed, None) => "timeout",
            (Outcome::Closed, Some(1)) => "dropped",
            (Outcome::Answered(200), Some(1)) => "ok",
            other => panic!("{}: {other:?}", s.paymentid),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payonic_request_faults_are_the_same_for_the_same_seed() {
    bounded(async {
        let n = 200;
        let a = request_fates(31, n).await;
        for (fate, rate) in [("500", 0.15), ("timeout", 0.085), ("dropped", 0.1105)] {
            // The later faults are drawn only for requests the earlier ones spared.
            about(
                fate,
                a.iter().filter(|f| **f == fate).count(),
                a.len(),
                rate,
            );
        }
        assert_eq!(
            a,
            request_fates(31, n).await,
            "the same seed, the same faults"
        );
        assert_ne!(a, request_fates(32, n).await, "another seed, other faults");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// When notifications arrive
// ---------------------------------------------------------------------------------------------

/// Sends `n` captures one by one under `cfg` and waits for one notification each; returns
/// them with what was sent, in request order.
async fn notified_captures(cfg: SandboxConfig, n: u64) -> (Vec<(Sent, Received)>, Value) {
    let c = Client::start(cfg).await;
    let inbox = Inbox::start().await;
    let sent = capture_each(&c, &inbox, n, 1).await;
    let mut out = Vec::new();
    for s in sent {
        assert_eq!(s.outcome, Outcome::Answered(200), "{s:?}");
        let r = inbox.for_response(s.responseid.as_deref().unwrap()).await;
        out.push((s, r));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(inbox.all().len(), n as usize, "one notification each");
    (out, c.counters().await["events"].clone())
}

/// `config()` at 1000×, notifications `min..max` of *real* time after their request.
fn timed(seed: u64, n: u64, min: Duration, max: Duration, faults: Faults) -> SandboxConfig {
    let mut cfg = generated(seed, n, faults);
    cfg.payonic.notify_delay_min = min * 1000;
    cfg.payonic.notify_delay_max = max * 1000;
    cfg
}

/// Generous: a notification may come this much after the latest it is due.
const SLACK: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payonic_notifications_arrive_between_notify_delay_min_and_max() {
    bounded(async {
        let (min, max) = (Duration::from_millis(100), Duration::from_millis(300));
        let n = 40;
        let (got, _) = notified_captures(timed(41, n, min, max, Faults::default()), n).await;
        let mut late_in_window = 0;
        for (s, r) in &got {
            let after = r.at.duration_since(s.started);
            // The clock's float scaling may round a microsecond away.
            assert!(
                after + Duration::from_millis(1) >= min,
                "{}: notified {after:?} after the request, before notify_delay_min",
                s.paymentid
            );
            assert!(
                r.at <= s.started + s.elapsed + max + SLACK,
                "{}: notified {after:?} after the request",
                s.paymentid
            );
            late_in_window += (after >= Duration::from_millis(250)) as usize;
        }
        // Uniform over 100..300 ms: a quarter come 250 ms or later (load only adds).
        assert!(
            late_in_window >= n as usize / 10,
            "only {late_in_window} of {n} came 250 ms or more after their request"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payonic_delayed_notifications_come_ten_steps_late() {
    bounded(async {
        // The step is notify_delay_max (notify.rs): 50 ms, so a delayed one is 500 ms late.
        let (min, max) = (Duration::from_millis(20), Duration::from_millis(50));
        let n = 30;
        let faults = Faults {
            webhook_delay_rate: 1.0,
            ..Faults::default()
        };
        let (got, events) = notified_captures(timed(42, n, min, max, faults), n).await;
        for (s, r) in &got {
            let after = r.at.duration_since(s.started);
            assert!(
                after + Duration::from_millis(1) >= min + max * 10,
                "{}: delayed, yet notified only {after:?} after the request",
                s.paymentid
            );
            assert!(
                r.at <= s.started + s.elapsed + max * 11 + SLACK,
                "{}: notified {after:?} after the request",
                s.paymentid
            );
        }
        assert_eq!(events["payonic.notifications.delayed"], n);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payonic_reordered_notifications_overtake_each_other_but_never_precede_their_event() {
    bounded(async {
        // A reordered notification comes half a step to three steps (150..900 ms here) late.
        let (min, max) = (Duration::from_millis(100), Duration::from_millis(300));
        let n = 30;
        let faults = Faults {
            webhook_reorder_rate: 1.0,
            ..Faults::default()
        };
        let (got, events) = notified_captures(timed(43, n, min, max, faults), n).await;
        for (s, r) in &got {
            let after = r.at.duration_since(s.started);
            assert!(
                after + Duration::from_millis(1) >= min + max / 2,
                "{}: reordered, yet notified only {after:?} after the request",
                s.paymentid
            );
            assert!(
                r.at <= s.started + s.elapsed + max * 4 + SLACK,
                "{}: notified {after:?} after the request",
                s.paymentid
            );
        }
        // The requests went one after another; their notifications do not come in that order.
        let inversions = got.windows(2).filter(|w| w[1].1.at < w[0].1.at).count();
        eprintln!("{inversions} of {} neighbours out of order", n - 1);
        assert!(
            inversions >= 3,
            "only {inversions} neighbours notified out of order"
        );
        assert_eq!(events["payonic.notifications.reordered"], n);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Behaviours of an independent implementation, off by default
// ---------------------------------------------------------------------------------------------

const TIMED_OUT: &str = "upstream timed out after processing";

/// An MIT of `amount` DKK on auth1's card under a new merchantpaymentid.
fn mit_request(merchantpaymentid: &str, amount: u64, url: &str) -> Value {
    json!({"merchantid": "m1", "paymentid": "auth1", "merchantpaymentid": merchantpaymentid,
           "amount": amount, "currency": "DKK", "notificationurl": url})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payonic_error_5xx_after_commit_processes_the_operation_and_answers_504() {
    bounded(async {
        let n = 200;
        let c = Client::start(generated(
            26,
            n,
            Faults {
                error_5xx_after_commit_rate: 0.2,
                ..Faults::default()
            },
        ))
        .await;
        let inbox = Inbox::start().await;
        let sent = capture_each(&c, &inbox, n, 8).await;
        let failed: Vec<&Sent> = sent
            .iter()
            .filter(|s| s.outcome != Outcome::Answered(200))
            .collect();
        about("504 after commit", failed.len(), sent.len(), 0.2);
        assert!(
            failed.iter().all(|s| s.outcome == Outcome::Answered(504)),
            "answered 504: {failed:?}"
        );
        // Processed exactly as if answered 200: listed, paid once, notified.
        processed_once_each(&c, &inbox, &sent, &failed).await;
        let counters = c.counters().await;
        assert_eq!(counters["error_5xx_after_commit"], failed.len() as u64);
        assert_eq!(counters["dropped_after_commit"], 0);
        assert_eq!(
            counters["requests"]["POST /payonic/api/{paymentid}/capture 504"],
            failed.len() as u64
        );
    })
    .await;
}

#[tokio::test]
async fn error_5xx_after_commit_takes_every_operation_but_not_health_or_the_payment_api() {
    let mut cfg = config();
    cfg.faults.error_5xx_after_commit_rate = 1.0;
    let c = Client::start(cfg).await;
    let inbox = Inbox::start().await;
    let url = inbox.at("/n");
    for (path, body) in [
        ("/mit", mit_request("mit5xx", 500, &url)),
        (
            "/auth1/capture",
            json!({"amount": 1095, "notificationurl": url}),
        ),
        (
            "/auth1/refund",
            json!({"amount": 95, "notificationurl": url}),
        ),
        ("/auth2/void", json!({"notificationurl": url})),
        ("/capt1/payout", json!({"amount": 2500, "currency": "EUR"})),
    ] {
        let (status, answer) = c.post(path, body).await;
        assert_eq!(
            (status, answer),
            (504, json!({"error": TIMED_OUT, "field": ""})),
            "{path}"
        );
    }
    let notified = inbox.for_path("/n", 4).await;
    assert!(
        notified.iter().all(|n| n.body["status"] == "approved"),
        "each async operation is notified as a success: {notified:?}"
    );
    let rows: Vec<(String, String)> = c
        .ledger()
        .await
        .iter()
        .map(|e| (e["operation"].to_string(), e["amount"].to_string()))
        .collect();
    assert_eq!(
        rows,
        [
            ("\"capture\"", "\"10.95\""),
            ("\"refund\"", "\"0.95\""),
            ("\"payout\"", "\"25.00\"")
        ]
        .map(|(o, a)| (o.to_string(), a.to_string()))
    );
    assert!(
        c.sb.payonic.payonic.payment("mit5xx").is_some(),
        "the MIT made its payment"
    );
    let (status, _) = c.get("/health", None).await;
    assert_eq!(status, 200, "health is not an operation");
    let p = c.payment_view("auth1", &inbox).await;
    assert_eq!(
        operation_types(&p),
        ["authorize", "capture", "refund"],
        "the Payment API answers 200 and lists what was processed"
    );
    assert_eq!(c.counters().await["error_5xx_after_commit"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_delay_keeps_a_payout_out_of_the_payment_api_until_it_has_passed() {
    bounded(async {
        let payout = json!({"amount": 2500, "currency": "EUR", "note": "p-1"});
        // By default a payout, processed at request time, is listed at once.
        let c = Client::start(config()).await;
        let inbox = Inbox::start().await;
        assert_eq!(c.post("/capt1/payout", payout.clone()).await.0, 200);
        let p = c.payment_view("capt1", &inbox).await;
        assert_eq!(operation_types(&p), ["authorize", "capture", "payout"]);

        // 30 minutes of provider time: 1.8 s here.
        let delay = Duration::from_secs(30 * 60);
        let mut cfg = config();
        cfg.payonic.listing_delay = delay;
        let c = Client::start(cfg).await;
        // A new inbox: the same lookup in a sandbox with the same seed has the same responseid.
        let inbox = Inbox::start().await;
        let before = Instant::now();
        let (status, answer) = c.post("/capt1/payout", payout).await;
        assert_eq!((status, answer["status"].as_str()), (200, Some("approved")));
        assert_eq!(c.ledger().await.len(), 1, "the money moved at once");
        let p = c.payment_view("capt1", &inbox).await;
        assert_eq!(
            operation_types(&p),
            ["authorize", "capture"],
            "seeded operations are listed from the start, the payout not yet"
        );
        let listed = loop {
            let p = c.payment_view("capt1", &inbox).await;
            if operation_types(&p).len() == 3 {
                break p;
            }
            assert!(
                before.elapsed() < Duration::from_secs(15),
                "never listed: {p}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let waited = before.elapsed();
        let payout = &listed["operations"][2];
        assert_eq!(
            (
                &payout["operationtype"],
                &payout["status"],
                &payout["responsecode"]
            ),
            (&json!("payout"), &json!("approved"), &json!("00"))
        );
        // The Payment API's notification time is its request's plus up to notify_delay_max
        // (2 s of provider time, 2 ms here).
        assert!(
            waited + Duration::from_millis(2) >= delay / 1000,
            "listed {waited:?} after the payout"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_listings_show_operations_not_listed_yet_as_pending_without_codes() {
    bounded(async {
        let mut cfg = config();
        cfg.payonic.listing_delay = Duration::from_secs(30 * 60);
        cfg.payonic.pending_listings = true;
        let c = Client::start(cfg).await;
        let inbox = Inbox::start().await;
        let before = Instant::now();
        let (status, _) = c
            .post(
                "/capt1/payout",
                json!({"amount": 2500, "currency": "EUR", "note": "p-1", "tags": "t-1"}),
            )
            .await;
        assert_eq!(status, 200);
        let p = c.payment_view("capt1", &inbox).await;
        assert_eq!(operation_types(&p), ["authorize", "capture", "payout"]);
        let ops = p["operations"].as_array().unwrap();
        assert_eq!(
            ops[1]["status"], "approved",
            "seeded: listed from the start"
        );
        let pending = &ops[2];
        assert_eq!(
            keys(pending),
            [
                "operationid",
                "operationtype",
                "amount",
                "currency",
                "created",
                "note",
                "tags",
                "status"
            ]
        );
        assert_eq!(
            (
                &pending["status"],
                &pending["amount"],
                &pending["currency"],
                &pending["note"]
            ),
            (
                &json!("pending"),
                &json!("2500"),
                &json!("EUR"),
                &json!("p-1")
            )
        );

        // A capture not processed yet is pending too, and not in the balance.
        c.accepted(
            "/auth1/capture",
            json!({"amount": 1095, "notificationurl": inbox.at("/capture")}),
        )
        .await;
        let p = c.payment_view("auth1", &inbox).await;
        assert_eq!(p["operations"][1]["operationtype"], "capture");
        assert_eq!(p["operations"][1]["status"], "pending");
        assert_eq!(p["balance"], 1095);

        // Once listable, the same operation shows its outcome.
        let listed = loop {
            let p = c.payment_view("capt1", &inbox).await;
            if p["operations"][2]["status"] != "pending" {
                break p;
            }
            assert!(
                before.elapsed() < Duration::from_secs(15),
                "still pending: {p}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let payout = &listed["operations"][2];
        assert_eq!(payout["operationid"], pending["operationid"]);
        assert_eq!(
            (&payout["status"], &payout["responsecode"]),
            (&json!("approved"), &json!("00"))
        );
        assert_eq!(payout["authorizationcode"].as_str().unwrap().len(), 6);
        // The capture was taken after the payout: it may become listable a moment later.
        let p = loop {
            let p = c.payment_view("auth1", &inbox).await;
            if p["operations"][1]["status"] != "pending" {
                break p;
            }
            assert!(
                before.elapsed() < Duration::from_secs(15),
                "still pending: {p}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(p["operations"][1]["status"], "approved");
        assert_eq!(p["balance"], 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_notifications_come_at_once_without_codes_and_the_final_one_follows() {
    bounded(async {
        let mut cfg = config();
        cfg.payonic.pending_notifications = true;
        // The final notification comes 100 to 200 ms (real) after the request.
        cfg.payonic.notify_delay_min = Duration::from_secs(100);
        cfg.payonic.notify_delay_max = Duration::from_secs(200);
        let c = Client::start(cfg).await;
        let inbox = Inbox::start().await;

        let rid = c
            .accepted(
                "/order1/capture",
                json!({"amount": 1095, "notificationurl": inbox.at("/capture")}),
            )
            .await;
        let got = inbox.for_path("/capture", 2).await;
        let (first, last) = (&got[0], &got[1]);
        assert_eq!(
            keys(&first.body),
            ["responseid", "paymentid", "merchantpaymentid", "status"]
        );
        assert_eq!(
            first.body,
            json!({"responseid": rid, "paymentid": "auth1", "merchantpaymentid": "order1",
                   "status": "pending"})
        );
        assert_eq!(last.body["responseid"], rid.as_str());
        assert_eq!(
            (&last.body["status"], &last.body["responsecode"]),
            (&json!("approved"), &json!("00"))
        );

        let rid = c
            .accepted("/mit", mit_request("mitpending", 500, &inbox.at("/mit")))
            .await;
        let got = inbox.for_path("/mit", 2).await;
        assert_eq!(
            keys(&got[0].body),
            [
                "responseid",
                "paymentid",
                "newmerchantpaymentid",
                "status",
                "processor",
                "eci",
                "par"
            ]
        );
        assert_eq!(got[0].body["status"], "pending");
        assert_eq!(got[1].body["responseid"], rid.as_str());
        assert_eq!(got[1].body["status"], "approved");
        assert_eq!(got[0].body["paymentid"], got[1].body["paymentid"]);

        // A payout answers on the socket and posts nothing, pending or not.
        let (status, _) = c
            .post(
                "/capt1/payout",
                json!({"amount": 2500, "currency": "EUR", "notificationurl": inbox.at("/payout")}),
            )
            .await;
        assert_eq!(status, 200);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(inbox.at_path("/payout").is_empty());
        assert_eq!(inbox.all().len(), 4);
    })
    .await;
}

#[tokio::test]
async fn numeric_responsecode_writes_the_code_as_a_number_everywhere() {
    let mut cfg = config();
    cfg.payonic.numeric_responsecode = true;
    let c = Client::start(cfg).await;
    let inbox = Inbox::start().await;
    let url = inbox.at("/n");
    for (path, body, code) in [
        (
            "/order1/capture",
            json!({"amount": 1095, "notificationurl": url}),
            0,
        ),
        (
            "/auth2/capture",
            json!({"amount": 2000, "notificationurl": url}),
            13,
        ),
        ("/mit", mit_request("mitnumeric", 500, &url), 0),
    ] {
        let rid = c.accepted(path, body).await;
        let n = inbox.for_response(&rid).await;
        assert_eq!(n.body["responsecode"], json!(code), "{path}: {}", n.body);
    }
    for (amount, code, status) in [(2500, 0, "approved"), (1051, 51, "declined")] {
        let (_, answer) = c
            .post(
                "/capt1/payout",
                json!({"amount": amount, "currency": "EUR"}),
            )
            .await;
        assert_eq!(
            (&answer["responsecode"], &answer["status"]),
            (&json!(code), &json!(status)),
            "payout of {amount}"
        );
    }
    let codes = |p: &Value| -> Vec<Value> {
        p["operations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["responsecode"].clone())
            .collect()
    };
    let p = c.payment_view("capt1", &inbox).await;
    assert_eq!(codes(&p), [json!(0), json!(0), json!(0), json!(51)]);
    let p = c.payment_view("auth2", &inbox).await;
    assert_eq!(codes(&p), [json!(0), json!(13)]);
}

/// A payout on capt1 with `trace` as its TraceApi header (none: without one); its status.
async fn traced_payout(c: &Client, trace: Option<&str>) -> u16 {
    let auth = format!("Basic {KEY}");
    let mut headers = vec![("Authorization", auth.as_str())];
    headers.extend(trace.map(|t| ("TraceApi", t)));
    let payout = json!({"amount": 2500, "currency": "EUR"});
    c.send(
        reqwest::Method::POST,
        "/capt1/payout",
        &headers,
        Some(&payout),
    )
    .await
    .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_trace_api_is_served_and_counted_and_remembered_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("payonic.sandbox");
    let trace = "e018fdfb5bda40e4a7e91759c22922fd";
    let reused = |counters: &Value| {
        counters["events"]["payonic.trace_reused"]
            .as_u64()
            .unwrap_or(0)
    };

    let c = Client::start_with_state(config(), &file).await;
    for t in [
        Some(trace),
        Some(trace),
        Some("0123456789abcdef0123456789abcdef"),
        None,
        None,
    ] {
        assert_eq!(
            traced_payout(&c, t).await,
            200,
            "{t:?}: served, not refused"
        );
    }
    assert_eq!(c.ledger().await.len(), 5, "each payout paid");
    assert_eq!(
        reused(&c.counters().await),
        1,
        "one reuse; identical requests without a TraceApi are not one"
    );
    c.sb.stop().await;

    let c = Client::start_with_state(config(), &file).await;
    assert_eq!(traced_payout(&c, Some(trace)).await, 200);
    assert_eq!(
        reused(&c.counters().await),
        2,
        "the sandbox remembers the TraceApi it saw"
    );
    c.sb.stop().await;
}

#[test]
fn the_behaviour_settings_are_off_by_default_and_checked_when_loaded() {
    let d = SandboxConfig::default();
    assert_eq!(
        (
            d.payonic.listing_delay,
            d.payonic.pending_listings,
            d.payonic.pending_notifications,
            d.payonic.numeric_responsecode,
            d.faults.error_5xx_after_commit_rate
        ),
        (Duration::ZERO, false, false, false, 0.0)
    );
    let dir = tempfile::tempdir().unwrap();
    let load = |yaml: &str| {
        let path = dir.path().join("sandbox.yaml");
        std::fs::write(&path, yaml).unwrap();
        SandboxConfig::load(&path).map_err(|e| e.to_string())
    };
    let c = load(
        "payonic:\n  listing_delay: 5m\n  pending_listings: true\n  pending_notifications: true\n  numeric_responsecode: true\nfaults:\n  error_5xx_after_commit_rate: 0.25\n",
    )
    .unwrap();
    assert_eq!(c.payonic.listing_delay, Duration::from_secs(300));
    assert!(c.payonic.pending_listings && c.payonic.pending_notifications);
    assert!(c.payonic.numeric_responsecode);
    assert_eq!(c.faults.error_5xx_after_commit_rate, 0.25);
    for (yaml, says) in [
        (
            "faults:\n  error_5xx_after_commit_rate: 1.5\n",
            "faults.error_5xx_after_commit_rate 1.5 is not a probability between 0 and 1",
        ),
        (
            "payonic:\n  listing_delay: soon\n",
            "`soon` is not a duration",
        ),
        (
            "payonic:\n  listing_delay: 5\n",
            "`5` is a duration without its unit (hint: write 5s or 5ms)",
        ),
        ("payonic:\n  pending_listings: maybe\n", "pending_listings"),
        (
            "payonic:\n  numeric_responsecodes: true\n",
            "numeric_responsecodes",
        ),
    ] {
        let e = load(yaml).unwrap_err();
        assert!(e.contains(says), "{yaml}: {e}");
    }
    let mut f = Faults::default();
    f.set("error_5xx_after_commit_rate=0.5").unwrap();
    assert_eq!(f.error_5xx_after_commit_rate, 0.5);
}
