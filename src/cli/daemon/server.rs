//! The daemon's HTTP server: an accept loop of our own around hyper, because `axum::serve`
//! installs no timer (hyper's header-read timeout is then silently inert) and keeps every
//! connection a peer opens. Here a connection that sends no complete request head within
//! [`HEADER_READ_TIMEOUT`] is closed, and past `server.max_connections` open ones a new
//! connection is closed at once, so a thousand idle sockets cannot keep `/healthz` from
//! answering or the process from its file descriptors.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot};

use crate::events::{ConnectionRefused, InternalEvent};

/// How long a connection may take to send a request's head (DESIGN.md: 10 s).
pub(super) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the server waits, once told to stop, for requests still being answered.
const DRAIN: Duration = Duration::from_secs(5);

/// File descriptors kept for everything else (the state, the lake, downloads, spills).
const RESERVED_FDS: u64 = 256;

/// The connection cap the process can afford: `wanted`, unless the open-file limit (raised to
/// its hard limit first, where the soft one is lower) leaves fewer.
pub(super) fn connection_cap(wanted: usize) -> usize {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let need = wanted as u64 + RESERVED_FDS;
    if limit.current.is_some_and(|soft| soft < need) {
        let raised = Rlimit {
            current: Some(limit.maximum.map_or(need, |hard| hard.min(need))),
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(error = %e, "could not raise the open-file limit");
        }
    }
    let soft = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    let cap = soft.saturating_sub(RESERVED_FDS).max(16).min(wanted as u64) as usize;
    if cap < wanted {
        tracing::warn!(
            wanted,
            cap,
            open_file_limit = soft,
            "server.max_connections is above what the open-file limit allows; raise LimitNOFILE (systemd) or the container's nofile limit"
        );
    }
    cap
}

/// Serves `app` on `listener` until `stop` fires, then lets the requests in flight finish for a
/// few seconds.
pub(super) async fn serve(
    listener: TcpListener,
    app: Router,
    max_connections: usize,
    stop: oneshot::Receiver<()>,
) {
    let open = Arc::new(Semaphore::new(max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, most likely: wait for some to close.
                    tracing::warn!(error = %e, "could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            ConnectionRefused { max_connections }.emit();
            drop(stream);
            continue;
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            // What `ConnectInfo` extractors read: the admin endpoint answers loopback peers only.
            req.extensions_mut().insert(ConnectInfo(peer));
            let mut app = app.clone();
            async move { tower_service::Service::call(&mut app, req).await }
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            let _ = connection.await;
            drop(permit);
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(DRAIN, graceful.shutdown()).await;
}
