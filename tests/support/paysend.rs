//! A minimal signed Paysend client for sandbox tests (deliberately separate from payrun's own
//! adapter: the tests check the emulation against the document, not against the adapter).

#![allow(dead_code)]

use payrun::sandbox::{Sandbox, SandboxConfig};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub fn sign(data: &[u8], key: &str) -> String {
    let mut h = Sha256::new();
    h.update(data);
    h.update(key.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A sandbox on a free loopback port.
pub async fn sandbox(config: SandboxConfig) -> (Sandbox, Client) {
    let key = config.paysend.inbound_key.clone();
    let partner = config.paysend.partner_id.clone();
    let sb = Sandbox::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("the sandbox starts");
    let client = Client {
        base: sb.base_url("paysend"),
        root: format!("http://{}", sb.addr),
        key,
        partner,
        http: reqwest::Client::new(),
    };
    (sb, client)
}

pub struct Client {
    pub base: String,
    pub root: String,
    pub key: String,
    pub partner: String,
    pub http: reqwest::Client,
}

pub struct Answer {
    pub status: u16,
    pub text: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    /// The `result` of the first task of a /processing answer.
    pub fn task(&self) -> Value {
        self.json()["payload"]["tasks"][0]["result"].clone()
    }
}

impl Client {
    pub fn envelope(&self, request_id: &str, tasks: Value) -> Value {
        json!({
            "header": {"request": {"id": request_id, "date": "2026-11-21T10:00:00+00:00"}, "service": {"sync": false}},
            "payload": {"partner": {"identifier": self.partner}, "tasks": tasks}
        })
    }

    pub async fn post_raw(
        &self,
        body: Vec<u8>,
        signature: Option<String>,
    ) -> Result<Answer, reqwest::Error> {
        let mut req = self
            .http
            .post(format!("{}/processing", self.base))
            .header("content-type", "application/json");
        if let Some(s) = signature {
            req = req.header("X-OPP-Signature", s);
        }
        let resp = req.body(body).send().await?;
        let status = resp.status().as_u16();
        Ok(Answer {
            status,
            text: resp.text().await?,
        })
    }

    /// Posts a correctly signed request.
    pub async fn post(&self, body: &Value) -> Answer {
        let bytes = serde_json::to_vec(body).unwrap();
        let sig = sign(&bytes, &self.key);
        self.post_raw(bytes, Some(sig))
            .await
            .expect("the sandbox answers")
    }

    /// One request with these tasks under a fresh request id.
    pub async fn run(&self, tasks: Value) -> Answer {
        let id = format!("req-{}", rand_id());
        self.post(&self.envelope(&id, tasks)).await
    }

    pub async fn status(&self, global_id: &str) -> Answer {
        let resp = self
            .http
            .get(format!("{}/processing/status/{global_id}", self.base))
            .header("X-OPP-Signature", sign(global_id.as_bytes(), &self.key))
            .send()
            .await
            .expect("the sandbox answers");
        let status = resp.status().as_u16();
        Answer {
            status,
            text: resp.text().await.unwrap(),
        }
    }

    pub async fn ledger(&self) -> Vec<Value> {
        self.http
            .get(format!("{}/__sandbox/ledger", self.root))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn counters(&self) -> Value {
        self.http
            .get(format!("{}/__sandbox/counters", self.root))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

fn rand_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A pay.toAccount task that passes the documented validation.
pub fn to_account(invoice: &str, amount: &str, currency: &str) -> Value {
    json!({"type": "pay.toAccount", "payload": {
        "transferAmount": amount.parse::<serde_json::Number>().unwrap(),
        "transferCurrency": currency,
        "purposeOfPayment": "Salary",
        "invoiceId": invoice,
        "from": {"sender": {"type": "LegalEntity", "name": "ACME Europe GmbH", "address": {"addressLine1": "Friedrichstrasse 68", "city": "Berlin", "country": "DE"}}},
        "to": {
            "destinationTransactionInstrument": {"identifierType": "IBAN", "accountIdentifier": "DE89370400440532013000", "bic": "COBADEFFXXX", "country": "DE"},
            "recipient": {"type": "Individual", "firstName": "Anna", "lastName": "Muller", "address": {"addressLine1": "Torstrasse 1", "city": "Berlin", "country": "DE"}}
        }
    }})
}

/// A pay.toCard task.
pub fn to_card(invoice: &str, amount: &str, currency: &str) -> Value {
    json!({"type": "pay.toCard", "payload": {
        "to": {"cardNumber": "4539025531693033", "firstName": "Derufrewe", "lastName": "Hecdioht", "amount": amount.parse::<serde_json::Number>().unwrap(), "currency": currency},
        "invoiceId": invoice
    }})
}
