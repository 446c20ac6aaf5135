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
pub mod config;
pub mod faults;
pub mod journal;
pub mod ledger;
pub mod payonic;
pub mod paysend;
mod server;
pub mod sharded;

pub use config::{Faults, SandboxConfig};

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
        Sandbox::start_with_state(config, listen, None).await
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
        config.check().map_err(std::io::Error::other)?;
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
                    let Some(j) = j.upgrade() else { return };
                    let _ = tokio::task::spawn_blocking(move || j.flush()).await;
                }
            });
        }
        let task = tokio::spawn(server::serve(
            listener,
            server::router(Arc::clone(&state), Arc::clone(&payonic)),
            rx,
            journal,
        ));
        Ok(Sandbox {
            addr,
            state,
            payonic,
            shutdown: Some(tx),
            task,
            restored,
        })
    }

    /// The base URL of a provider's emulation, e.g. `http://127.0.0.1:PORT/paysend` or
    /// `…/payonic` (whose functions are under `…/payonic/api/`).
    pub fn base_url(&self, provider: &str) -> String {
        format!("http://{}/{provider}", self.addr)
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
            let _ = j.flush();
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
