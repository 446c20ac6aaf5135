//! The HTTP server under the emulations: an axum router served connection by connection with
//! hyper, so that a handler can ask for its connection to be dropped *after* it committed its
//! work — the "provider paid, client never heard" fault that axum's own server cannot produce.

use super::State;
use axum::Router;
use axum::extract::{Request, State as AxState};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use tower::ServiceExt;

/// Put in a response's extensions: close the connection instead of sending the response.
#[derive(Debug, Clone, Copy)]
pub struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by fault injection")
    }
}

impl std::error::Error for DropConnection {}

pub fn router(state: Arc<State>, payonic: Arc<super::payonic::Ctx>) -> Router {
    let reset_payonic = Arc::clone(&payonic);
    Router::new()
        .nest("/paysend", super::paysend::routes())
        .nest("/payonic", super::payonic::routes(Arc::clone(&payonic)))
        .merge(super::payonic::admin_routes(payonic))
        .merge(inspection())
        .route(
            "/__sandbox/reset",
            post(move |st: AxState<Arc<State>>| async move {
                // Journaled in this order: the reset, then the balances and payments it
                // restores from the configuration.
                let answer = reset(st).await;
                reset_payonic.payonic.reset(&reset_payonic.state.ledger);
                answer
            }),
        )
        .layer(middleware::from_fn_with_state(Arc::clone(&state), count))
        .with_state(state)
}

/// The sandbox's ledger and counters (`/__sandbox/ledger`, `/__sandbox/counters`): also how
/// payrun recognises a sandbox (`--time-scale` is for sandboxes only).
pub fn inspection() -> Router<Arc<State>> {
    Router::new()
        .route("/__sandbox/ledger", get(ledger))
        .route("/__sandbox/counters", get(counters))
}

/// Counts every request by method, path pattern and status.
async fn count(AxState(state): AxState<Arc<State>>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    // Ids in paths would make a counter per request: keep the pattern.
    let pattern = if path.starts_with("/paysend/processing/status/") {
        "/paysend/processing/status/{globalId}".to_string()
    } else if path.starts_with("/__sandbox/payonic/lifecycle/") {
        "/__sandbox/payonic/lifecycle/{paymentid}".to_string()
    } else if let Some((_, function)) = path
        .strip_prefix("/payonic/api/")
        .and_then(|rest| rest.split_once('/'))
    {
        format!("/payonic/api/{{paymentid}}/{function}")
    } else {
        path
    };
    let resp = next.run(req).await;
    let status = if resp.extensions().get::<DropConnection>().is_some() {
        "dropped".to_string()
    } else {
        resp.status().as_u16().to_string()
    };
    state.ledger.count(format!("{method} {pattern} {status}"));
    resp
}

async fn ledger(AxState(state): AxState<Arc<State>>) -> impl IntoResponse {
    axum::Json(state.ledger.entries())
}

async fn counters(AxState(state): AxState<Arc<State>>) -> impl IntoResponse {
    axum::Json(state.ledger.counters())
}

async fn reset(AxState(state): AxState<Arc<State>>) -> impl IntoResponse {
    state.ledger.reset();
    state.paysend.reset();
    let currencies: Vec<String> = state.paysend.config.balances.keys().cloned().collect();
    state.paysend.journal_balances(&state.ledger, &currencies);
    axum::http::StatusCode::NO_CONTENT
}

/// Accepts connections until `shutdown` fires; with `tls`, each speaks HTTPS (its handshake
/// runs in the connection's own task, so a slow client holds up no other). With a state file
/// (`journal`), an answer leaves only once what the request changed is on disk; if that fails,
/// the connection is dropped unanswered (the client is in doubt, as after a crash).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut shutdown: tokio::sync::oneshot::Receiver<()>,
    journal: Option<Arc<super::journal::Journal>>,
) {
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let tls = tls.clone();
        let journal = journal.clone();
        tokio::spawn(async move {
            match tls {
                None => connection(stream, router, journal).await,
                Some(acceptor) => {
                    // A client that does not trust the certificate ends here.
                    if let Ok(stream) = acceptor.accept(stream).await {
                        connection(stream, router, journal).await
                    }
                }
            }
        });
    }
}

/// Serves one connection's requests with the router.
async fn connection<S>(stream: S, router: Router, journal: Option<Arc<super::journal::Journal>>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let router = router.clone();
        let journal = journal.clone();
        async move {
            let resp = router
                .oneshot(req.map(axum::body::Body::new))
                .await
                .unwrap_or_else(|never| match never {});
            if let Some(j) = &journal
                && let Err(e) = j.commit().await
            {
                tracing::error!("sandbox: cannot write the state file: {e}");
                return Err(DropConnection);
            }
            if resp.extensions().get::<DropConnection>().is_some() {
                Err(DropConnection)
            } else {
                Ok(resp)
            }
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}
