//! `payrun sandbox`: payout providers emulated as their documents describe them — error codes,
//! signatures, idempotency, asynchronous statuses and notifications — plus reproducible fault
//! injection and a ledger of every money movement. Users rehearse batches on it; payrun's tests
//! use it as ground truth. Each provider lives under its own path prefix (`/paysend/…`,
//! `/payonic/…`); the
//! sandbox's own endpoints (ledger, counters, reset, Payonic's life cycle trigger) are under
//! `/__sandbox/` and exist only here.
//!
//! The emulations live apart from payrun's client adapters: nothing here is shared with the
//! code that talks to real providers, so a misreading of a document cannot hide in both.

pub mod clock;
pub mod compact;
pub mod config;
pub mod faults;
pub mod journal;
pub mod ledger;
pub mod payonic;
pub mod paysend;
mod server;
pub mod sharded;
pub mod tls;

pub use config::{Faults, SandboxConfig};
pub use server::inspection;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

/// The client every emulation posts its notifications (webhooks, callbacks) with.
pub(crate) fn notify_client() -> &'static reqwest::Client {
    static C: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    C.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .unwrap_or_default()
    })
}

/// Everything the handlers share.
pub struct State {
    pub seed: u64,
    pub clock: clock::Clock,
    pub ledger: ledger::Ledger,
    pub faults: RwLock<Faults>,
    pub paysend: paysend::Paysend,
}

impl State {
    pub fn faults(&self) -> Faults {
        self.faults
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A running sandbox.
pub struct Sandbox {
    pub addr: SocketAddr,
    pub state: Arc<State>,
    /// The Payonic emulation (see `payonic::Ctx` for why it is not in `State`).
    pub payonic: Arc<payonic::Ctx>,
    /// `http`, or `https` for a sandbox started with `start_tls`.
    scheme: &'static str,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    /// What the state file held when this sandbox started (None without one).
    pub restored: Option<Restored>,
}

/// What a sandbox found in its state file on start.
#[derive(Debug, Clone, Copy, Default)]
pub struct Restored {
    /// Records replayed.
    pub records: usize,
    /// Sandboxes that ran on the file before this one.
    pub starts: u64,
    /// Bytes of a torn last line dropped.
    pub torn: usize,
}

impl Sandbox {
    /// Starts a sandbox on `listen` (port 0 picks a free one) in the current tokio runtime,
    /// its state in memory only.
    pub async fn start(config: SandboxConfig, listen: SocketAddr) -> std::io::Result<Sandbox> {
        Sandbox::start_with(config, listen, None, None).await
    }

    /// `start`, serving HTTPS with `cert` (`payrun sandbox --tls`).
    pub async fn start_tls(
        config: SandboxConfig,
        listen: SocketAddr,
        cert: &tls::SelfSigned,
    ) -> std::io::Result<Sandbox> {
        Sandbox::start_with(config, listen, None, Some(cert)).await
    }

    /// Starts a sandbox whose state lives in the file `state` too (see `journal`): what the
    /// file holds is replayed first — accepted requests, payments, balances, Payonic payments
    /// and operations, the ledger and counters — and provider time continues from it. What
    /// the provider remembers wins over `config`: balances already in the file are kept, and
    /// only the configured Payonic payments it does not know are created. Credentials, faults,
    /// timings and notification URLs come from `config` on every start.
    pub async fn start_with_state(
        config: SandboxConfig,
        listen: SocketAddr,
        state_file: Option<&std::path::Path>,
    ) -> std::io::Result<Sandbox> {
        Sandbox::start_with(config, listen, state_file, None).await
    }

    /// A sandbox with a state file (None: memory only) and HTTPS (None: plain HTTP).
    pub async fn start_with(
        config: SandboxConfig,
        listen: SocketAddr,
        state_file: Option<&std::path::Path>,
        cert: Option<&tls::SelfSigned>,
    ) -> std::io::Result<Sandbox> {
        config.check().map_err(std::io::Error::other)?;
        let tls = cert
            .map(|c| c.server_config().map(tokio_rustls::TlsAcceptor::from))
            .transpose()
            .map_err(std::io::Error::other)?;
        let opened = state_file
            .map(journal::Journal::open)
            .transpose()
            .map_err(std::io::Error::other)?;
        let now_wall = journal::wall_us();
        let offset = opened.as_ref().map_or(std::time::Duration::ZERO, |(_, r)| {
            journal::resumed_clock(&r.records, now_wall)
        });
        let clock = clock::Clock::resumed(config.time_scale, offset);
        let state = Arc::new(State {
            seed: config.seed,
            paysend: paysend::Paysend::new(&config.paysend, &clock),
            clock,
            ledger: ledger::Ledger::default(),
            faults: RwLock::new(config.faults.clone()),
        });
        let payonic = Arc::new(payonic::Ctx {
            state: Arc::clone(&state),
            payonic: if opened.is_some() {
                payonic::Payonic::empty(&config.payonic, config.seed)
            } else {
                payonic::Payonic::new(&config.payonic, config.seed)
            },
        });
        let mut restored = None;
        let journal = match opened {
            None => None,
            Some((journal, replay)) => {
                let mut funded = std::collections::BTreeSet::new();
                let mut starts = 0;
                for r in &replay.records {
                    state.ledger.apply(r);
                    if let Some(c) = state.paysend.apply(r) {
                        funded.insert(c);
                    }
                    payonic.payonic.apply(r);
                    match r {
                        journal::Record::Start { .. } => starts += 1,
                        // After a reset the configured balances applied again.
                        journal::Record::Reset => funded.clear(),
                        _ => {}
                    }
                }
                state.paysend.set_epoch(starts);
                let journal = Arc::new(journal);
                state.ledger.persist_to(Arc::clone(&journal));
                journal.append(&journal::Record::Start {
                    wall_us: now_wall,
                    provider: offset,
                    time_scale: config.time_scale,
                });
                // Balances the file does not hold yet start from the configuration.
                let fresh: Vec<String> = config
                    .paysend
                    .balances
                    .keys()
                    .filter(|c| !funded.contains(*c))
                    .cloned()
                    .collect();
                state.paysend.journal_balances(&state.ledger, &fresh);
                payonic.payonic.seed_payments(Some(&state.ledger));
                journal.flush()?;
                restored = Some(Restored {
                    records: replay.records.len(),
                    starts,
                    torn: replay.torn,
                });
                Some(journal)
            }
        };
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        if let Some(j) = &journal {
            // Counter lines that no answer waited for reach the disk within a second.
            let j = Arc::downgrade(j);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    let Some(j) = j.upgrade().filter(|j| !j.is_closed()) else {
                        return;
                    };
                    let _ = tokio::task::spawn_blocking(move || j.flush()).await;
                }
            });
        }
        let task = tokio::spawn(server::serve(
            listener,
            server::router(Arc::clone(&state), Arc::clone(&payonic)),
            tls.clone(),
            rx,
            journal,
        ));
        Ok(Sandbox {
            addr,
            state,
            payonic,
            scheme: if tls.is_some() { "https" } else { "http" },
            shutdown: Some(tx),
            task,
            restored,
        })
    }

    /// The base URL of a provider's emulation, e.g. `http://127.0.0.1:PORT/paysend` or
    /// `…/payonic` (whose functions are under `…/payonic/api/`); `https://` when serving TLS.
    pub fn base_url(&self, provider: &str) -> String {
        format!("{}/{provider}", self.root_url())
    }

    /// `http://127.0.0.1:PORT` (or `https://…`): where the `/__sandbox/` endpoints are.
    /// What `payrun sandbox` prints about each emulated provider: its base URL and the test
    /// credentials it accepts (from `config`, the configuration it started from).
    pub fn banner(&self, config: &SandboxConfig) -> Vec<String> {
        let root = self.root_url();
        let (paysend, payonic) = (&config.paysend, &config.payonic);
        vec![
            format!("paysend: {}", self.base_url("paysend")),
            format!("  partner_id:   {}", paysend.partner_id),
            format!("  inbound_key:  {}", paysend.inbound_key),
            format!("  outbound_key: {}", paysend.outbound_key),
            format!("payonic: {}", self.base_url("payonic")),
            format!("  api_key:      {}", payonic.api_key),
            format!(
                "  life cycle:   POST {root}/__sandbox/payonic/lifecycle/{{paymentid}} -> {}",
                payonic
                    .lifecycle_url
                    .as_deref()
                    .unwrap_or("(payonic.lifecycle_url not set)")
            ),
        ]
    }

    pub fn root_url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// Replaces the fault settings (tests change them between phases).
    pub fn set_faults(&self, faults: Faults) {
        *self.state.faults.write().unwrap_or_else(|p| p.into_inner()) = faults;
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
        if let Some(j) = self.state.ledger.journal() {
            let _ = j.close();
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SandboxConfig {
        let mut c = SandboxConfig {
            time_scale: 1000.0,
            ..SandboxConfig::default()
        };
        c.payonic.payments.push(config::PayonicPayment {
            paymentid: "P1".into(),
            merchantpaymentid: None,
            amount: 1000,
            currency: "DKK".into(),
            state: config::SeedState::Captured,
            reference: String::new(),
            customer: config::PayonicCustomer {
                email: "anna@example.com".into(),
                ..Default::default()
            },
        });
        c
    }

    async fn refund(sb: &Sandbox, amount: u64, note: &str) {
        let r = reqwest::Client::new()
            .post(format!("{}/api/P1/refund", sb.base_url("payonic")))
            .header("Authorization", "Basic sandbox-payonic-key")
            .json(&serde_json::json!({"amount": amount, "note": note, "notificationurl": "http://127.0.0.1:9/n"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    fn refunds(sb: &Sandbox) -> Vec<(String, &'static str)> {
        sb.payonic
            .payonic
            .payment("P1")
            .unwrap()
            .operations
            .iter()
            .filter(|o| o.optype == payonic::payment::OpType::Refund)
            .map(|o| (o.note.clone(), o.responsecode))
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restarted_sandbox_keeps_payonic_operations_and_seeds_only_unknown_payments() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.sandbox");
        let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let sb = Sandbox::start_with_state(config(), listen, Some(&file))
            .await
            .unwrap();
        refund(&sb, 600, "first").await;
        assert_eq!(refunds(&sb), [("first".to_string(), "00")]);
        sb.stop().await;

        // The same configuration seeds P1 again: the sandbox already has it, refund and all.
        let sb = Sandbox::start_with_state(config(), listen, Some(&file))
            .await
            .unwrap();
        assert_eq!(sb.restored.unwrap().starts, 1);
        refund(&sb, 600, "second").await;
        assert_eq!(
            refunds(&sb),
            [
                ("first".to_string(), "00"),
                ("second".to_string(), payonic::codes::INVALID_AMOUNT)
            ],
            "600 of 1000 were refunded before the restart: 600 more is too much"
        );
        assert_eq!(sb.state.ledger.entries().len(), 1);
        let p = sb.payonic.payonic.payment("P1").unwrap();
        assert_eq!(
            p.customer.email, "****.com",
            "the state file keeps no e-mail address, so a restored payment shows it masked"
        );
        sb.stop().await;
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(!text.contains("anna@example.com"), "{text}");
        assert!(!text.contains("sandbox-payonic-key"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_a_state_file_nothing_is_written() {
        let sb = Sandbox::start(config(), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        assert!(sb.state.ledger.journal().is_none());
        assert!(sb.restored.is_none());
        sb.stop().await;
    }
}
