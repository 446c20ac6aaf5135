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
pub mod ledger;
pub mod payonic;
pub mod paysend;
mod server;
pub mod sharded;
pub mod tls;

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
    /// `http`, or `https` for a sandbox started with `start_tls`.
    scheme: &'static str,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sandbox {
    /// Starts a sandbox on `listen` (port 0 picks a free one) in the current tokio runtime.
    pub async fn start(config: SandboxConfig, listen: SocketAddr) -> std::io::Result<Sandbox> {
        Sandbox::start_with(config, listen, None).await
    }

    /// `start`, serving HTTPS with `cert` (`payrun sandbox --tls`).
    pub async fn start_tls(
        config: SandboxConfig,
        listen: SocketAddr,
        cert: &tls::SelfSigned,
    ) -> std::io::Result<Sandbox> {
        let acceptor = cert
            .server_config()
            .map(tokio_rustls::TlsAcceptor::from)
            .map_err(std::io::Error::other)?;
        Sandbox::start_with(config, listen, Some(acceptor)).await
    }

    async fn start_with(
        config: SandboxConfig,
        listen: SocketAddr,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> std::io::Result<Sandbox> {
        config.check().map_err(std::io::Error::other)?;
        let clock = clock::Clock::new(config.time_scale);
        let state = Arc::new(State {
            seed: config.seed,
            paysend: paysend::Paysend::new(&config.paysend, &clock),
            clock,
            ledger: ledger::Ledger::default(),
            faults: RwLock::new(config.faults.clone()),
        });
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let payonic = Arc::new(payonic::Ctx {
            state: Arc::clone(&state),
            payonic: payonic::Payonic::new(&config.payonic, config.seed),
        });
        let scheme = if tls.is_some() { "https" } else { "http" };
        let task = tokio::spawn(server::serve(
            listener,
            server::router(Arc::clone(&state), Arc::clone(&payonic)),
            tls,
            rx,
        ));
        Ok(Sandbox {
            addr,
            state,
            payonic,
            scheme,
            shutdown: Some(tx),
            task,
        })
    }

    /// The base URL of a provider's emulation, e.g. `http://127.0.0.1:PORT/paysend` or
    /// `…/payonic` (whose functions are under `…/payonic/api/`); `https://` when serving TLS.
    pub fn base_url(&self, provider: &str) -> String {
        format!("{}/{provider}", self.root_url())
    }

    /// `http://127.0.0.1:PORT` (or `https://…`): where the `/__sandbox/` endpoints are.
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
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
