//! The notification listener's server: serves the router `runner` builds, connection by
//! connection, so that nobody who can reach the port can keep a genuine notification out.
//!
//! A listener that waits forever for a request is a denial of service: a thousand idle
//! connections, or one that sends its header a byte every few seconds, would hold every slot.
//! So a connection may spend at most `Limits::idle` outside a request — before its request's
//! head is complete, or between two requests — and a body must arrive within
//! `Limits::body_time`. At most `Limits::connections` are open at once; when a new one comes at
//! the cap, the connection idle the longest gives way to it (a connection whose request is
//! being handled never does), so a flood of idle connections cannot lock a provider out. When
//! the process runs out of file descriptors, the oldest idle connection is closed as well.

use axum::Router;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower::ServiceExt;

/// What one connection may take of the listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Time a connection may spend outside a request (reading a request head, or kept alive
    /// between two requests) before it is closed.
    pub idle: Duration,
    /// Time a request's body may take to arrive once its head has.
    pub body_time: Duration,
    /// The largest body taken; a larger one is answered 413 unread.
    pub body_bytes: usize,
    /// Connections open at once.
    pub connections: usize,
}

impl Default for Limits {
    /// Notifications are small and sent in one go: ten seconds are generous for a head or a
    /// body, and a provider never needs hundreds of connections to one merchant at once.
    fn default() -> Limits {
        Limits {
            idle: Duration::from_secs(10),
            body_time: Duration::from_secs(10),
            body_bytes: 1 << 20,
            connections: 256,
        }
    }
}

/// Marks `busy` while a request is being handled.
const BUSY: u64 = u64::MAX;

/// One open connection: since when it is idle (ms since the listener started, or `BUSY`),
/// and how to close it.
struct Conn {
    idle_since: AtomicU64,
    close: tokio::sync::Notify,
}

/// The open connections, by number.
struct Registry {
    started: tokio::time::Instant,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
}

impl Registry {
    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn len(&self) -> usize {
        self.conns.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// Closes the connection idle the longest; false when every connection is busy.
    fn close_oldest_idle(&self) -> bool {
        let Ok(conns) = self.conns.lock() else {
            return false;
        };
        let oldest = conns
            .values()
            .filter(|c| c.idle_since.load(Ordering::Relaxed) != BUSY)
            .min_by_key(|c| c.idle_since.load(Ordering::Relaxed));
        match oldest {
            Some(c) => {
                // A stored permit: the connection's task sees it even if it is not waiting yet.
                c.close.notify_one();
                // Counted as busy from now on so that it is not chosen twice.
                c.idle_since.store(BUSY, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// Closes every connection idle for longer than `idle`; returns how many.
    fn sweep(&self, idle: Duration) -> usize {
        let now = self.now();
        let limit = idle.as_millis() as u64;
        let Ok(conns) = self.conns.lock() else {
            return 0;
        };
        let mut closed = 0;
        for c in conns.values() {
            let since = c.idle_since.load(Ordering::Relaxed);
            if since != BUSY && now.saturating_sub(since) > limit {
                c.close.notify_one();
                closed += 1;
            }
        }
        closed
    }
}

/// Marks a connection busy for as long as it lives, then idle from the moment it is dropped.
struct Busy<'a> {
    conn: &'a Conn,
    registry: &'a Registry,
}

impl<'a> Busy<'a> {
    fn new(conn: &'a Conn, registry: &'a Registry) -> Busy<'a> {
        conn.idle_since.store(BUSY, Ordering::Relaxed);
        Busy { conn, registry }
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.conn
            .idle_since
            .store(self.registry.now(), Ordering::Relaxed);
    }
}

/// Serves `router` on `socket` until the task is aborted.
pub fn serve(
    socket: tokio::net::TcpListener,
    router: Router,
    limits: Limits,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let registry = Arc::new(Registry {
            started: tokio::time::Instant::now(),
            conns: Mutex::new(HashMap::new()),
        });
        let mut sweep = tokio::time::interval((limits.idle / 4).max(Duration::from_millis(50)));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next = 0u64;
        let mut warned_full = false;
        loop {
            let stream = tokio::select! {
                _ = sweep.tick() => {
                    let closed = registry.sweep(limits.idle);
                    if closed > 0 {
                        tracing::debug!(closed, "closed notification connections that sent no request in time");
                    }
                    continue;
                }
                accepted = socket.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors (or another passing failure): make room
                        // and try again shortly, rather than spinning.
                        tracing::warn!("the notification listener cannot accept a connection: {e}");
                        registry.close_oldest_idle();
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            if registry.len() >= limits.connections {
                if !warned_full {
                    warned_full = true;
                    tracing::warn!(
                        limit = limits.connections,
                        "the notification listener has {} connections open: the longest idle give way to new ones",
                        limits.connections
                    );
                }
                if !registry.close_oldest_idle() {
                    // Every connection is in a request: this one waits its turn closed.
                    drop(stream);
                    continue;
                }
            }
            let _ = stream.set_nodelay(true);
            let id = next;
            next += 1;
            let conn = Arc::new(Conn {
                idle_since: AtomicU64::new(registry.now()),
                close: tokio::sync::Notify::new(),
            });
            if let Ok(mut conns) = registry.conns.lock() {
                conns.insert(id, Arc::clone(&conn));
            }
            let (router, registry) = (router.clone(), Arc::clone(&registry));
            tokio::spawn(async move {
                tokio::select! {
                    _ = connection(stream, router, &conn, &registry, limits) => {}
                    _ = conn.close.notified() => {}
                }
                if let Ok(mut conns) = registry.conns.lock() {
                    conns.remove(&id);
                }
            });
        }
    })
}

/// Serves one connection's requests, reading each body within `limits.body_time`.
async fn connection(
    stream: tokio::net::TcpStream,
    router: Router,
    conn: &Conn,
    registry: &Registry,
    limits: Limits,
) {
    let service = hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| {
        let router = router.clone();
        async move {
            let _busy = Busy::new(conn, registry);
            let (parts, body) = req.into_parts();
            let read = axum::body::to_bytes(axum::body::Body::new(body), limits.body_bytes);
            let body = match tokio::time::timeout(limits.body_time, read).await {
                Ok(Ok(bytes)) => bytes,
                Ok(Err(_)) => return Ok::<_, std::convert::Infallible>(refuse(413)),
                Err(_) => return Ok(refuse(408)),
            };
            let req = axum::http::Request::from_parts(parts, axum::body::Body::from(body));
            Ok(router
                .oneshot(req)
                .await
                .unwrap_or_else(|never| match never {}))
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// An answer with `status` and no body, closing the connection (its body may be unread).
fn refuse(status: u16) -> axum::response::Response {
    let mut resp = axum::response::Response::new(axum::body::Body::empty());
    *resp.status_mut() =
        axum::http::StatusCode::from_u16(status).unwrap_or(axum::http::StatusCode::BAD_REQUEST);
    resp.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn quick() -> Limits {
        Limits {
            idle: Duration::from_millis(300),
            body_time: Duration::from_millis(300),
            body_bytes: 64,
            connections: 8,
        }
    }

    async fn started(limits: Limits) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let router = Router::new().route("/notify", axum::routing::post(|| async { "taken" }));
        (addr, serve(socket, router, limits))
    }

    /// Sends one notification on a fresh connection; the status line's code, or None.
    async fn notify(addr: std::net::SocketAddr, body: &str) -> Option<u16> {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req = format!(
            "POST /notify HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.ok()?;
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut answer))
            .await
            .ok()?
            .ok()?;
        answer.split(' ').nth(1)?.parse().ok()
    }

    /// True when the peer closed the connection (read gives 0 bytes or an error).
    async fn closed_within(s: &mut tokio::net::TcpStream, wait: Duration) -> bool {
        let mut buf = [0u8; 256];
        matches!(
            tokio::time::timeout(wait, s.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    #[tokio::test]
    async fn a_genuine_notification_gets_in_past_more_idle_connections_than_the_cap() {
        let (addr, server) = started(quick()).await;
        let mut idle = Vec::new();
        for _ in 0..40 {
            idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        assert_eq!(notify(addr, "{}").await, Some(200));
        server.abort();
    }

    #[tokio::test]
    async fn a_connection_that_never_sends_its_request_is_closed() {
        let (addr, server) = started(quick()).await;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(closed_within(&mut s, Duration::from_secs(5)).await);
        server.abort();
    }

    #[tokio::test]
    async fn a_header_sent_a_byte_at_a_time_does_not_hold_the_connection_forever() {
        let (addr, server) = started(quick()).await;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let drip = b"POST /notify HTTP/1.1\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        let mut closed = false;
        for b in drip {
            if s.write_all(&[*b]).await.is_err() {
                closed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(closed || closed_within(&mut s, Duration::from_secs(5)).await);
        server.abort();
    }

    #[tokio::test]
    async fn a_body_that_never_arrives_is_answered_408_and_a_huge_one_413() {
        let (addr, server) = started(quick()).await;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /notify HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nab")
            .await
            .unwrap();
        let mut answer = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut answer)).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert_eq!(notify(addr, &"x".repeat(100)).await, Some(413));
        server.abort();
    }

    #[tokio::test]
    async fn a_connection_kept_alive_after_its_request_is_closed_once_idle() {
        let (addr, server) = started(quick()).await;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /notify HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        assert!(closed_within(&mut s, Duration::from_secs(5)).await);
        server.abort();
    }
}
