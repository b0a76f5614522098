//! The HTTP server under `serve` and the `/healthz` + `/metrics` endpoint of the other
//! processes: HTTP/1.1 with bounds on everything a client controls.
//!
//! - At most [`MAX_CONNECTIONS`] connections at once; past that, new ones wait in the
//!   listen backlog until one closes.
//! - Request heads up to 16 KiB (431 past that), targets up to 8 KiB (414), bodies up to
//!   [`MAX_BODY`] (413); time limits per connection as in [`crate::http::conn`].
//! - On shutdown: stop accepting, close idle connections, let requests in flight finish for
//!   up to [`GRACE`], then drop every connection still open (half-sent requests, clients
//!   that do not read), so that the process exits within seconds whatever clients do.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::http::answer;
use crate::http::conn::Guarded;

pub(crate) const MAX_CONNECTIONS: usize = 1024;
pub(crate) const MAX_BODY: usize = 16 * 1024;
/// The largest request head, request line included.
const MAX_HEAD: usize = 16 * 1024;
/// hyper's read and write buffers, per connection.
const MAX_BUFFER: usize = 64 * 1024;
/// How long requests in flight at shutdown may take to finish; a reservation waits at most
/// this long for Redis.
pub(crate) const GRACE: Duration = Duration::from_secs(5);
/// How long connections get to write their last answers once no request is in flight.
const FLUSH: Duration = Duration::from_secs(1);

type Service = TowerToHyperService<Router>;

/// Serves `router` on `addr` until `shutdown`, then drains as the module docs say.
pub(crate) async fn serve(addr: SocketAddr, router: Router, shutdown: CancellationToken) -> Result<()> {
    let listener =
        TcpListener::bind(addr).await.map_err(|source| Error::Listen { port: addr.port(), source })?;
    tracing::info!(%addr, "serving HTTP");
    let in_flight = Arc::new(watch::Sender::new(0usize));
    let service = TowerToHyperService::new(harden(router, in_flight.clone()));
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let drop_all = CancellationToken::new();
    while let Some((stream, slot)) = accept(&listener, &slots, &shutdown).await {
        let stop = (shutdown.clone(), drop_all.clone());
        tokio::spawn(connection(stream, service.clone(), slot, stop));
    }
    drop(listener);
    drain(&in_flight, &slots, &drop_all).await;
    Ok(())
}

/// The router with the limits and the JSON error answers, counting requests in flight.
fn harden(router: Router, in_flight: Arc<watch::Sender<usize>>) -> Router {
    router
        .layer(middleware::from_fn(answer::limit_uri))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::map_response(answer::json_errors))
        .layer(middleware::from_fn(move |request: Request, next: Next| {
            let counted = Counted::new(in_flight.clone());
            async move {
                let response: Response = next.run(request).await;
                drop(counted);
                response
            }
        }))
}

/// One request in flight, for as long as it lives (also when its connection drops it).
struct Counted(Arc<watch::Sender<usize>>);

impl Counted {
    fn new(in_flight: Arc<watch::Sender<usize>>) -> Counted {
        in_flight.send_modify(|n| *n += 1);
        Counted(in_flight)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// The next connection and its slot, or None once `shutdown` is cancelled.
async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
    shutdown: &CancellationToken,
) -> Option<(TcpStream, OwnedSemaphorePermit)> {
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            _ = shutdown.cancelled() => return None,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => return None,
        };
        match accepted {
            Ok((stream, _)) => return Some((stream, slot)),
            Err(e) => {
                // out of file descriptors, most likely: wait rather than spin
                if crate::backoff::may_log("cannot accept HTTP connections") {
                    tracing::warn!(error = %e, "cannot accept HTTP connections");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn connection(
    stream: TcpStream,
    service: Service,
    _slot: OwnedSemaphorePermit,
    (shutdown, drop_all): (CancellationToken, CancellationToken),
) {
    let _ = stream.set_nodelay(true);
    let io = TokioIo::new(Guarded::new(stream));
    let mut builder = http1::Builder::new();
    builder.max_header_size(MAX_HEAD).max_buf_size(MAX_BUFFER).writev(false).header_read_timeout(None);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = shutdown.cancelled() => {}
    }
    conn.as_mut().graceful_shutdown();
    tokio::select! {
        _ = conn => {}
        _ = drop_all.cancelled() => {}
    }
}

/// Waits for requests in flight (up to [`GRACE`]) and for their answers to be written (up
/// to [`FLUSH`]), then drops whatever connection is still open.
async fn drain(in_flight: &watch::Sender<usize>, slots: &Semaphore, drop_all: &CancellationToken) {
    let mut requests = in_flight.subscribe();
    if tokio::time::timeout(GRACE, requests.wait_for(|n| *n == 0)).await.is_err() {
        tracing::warn!(
            requests = *in_flight.borrow(),
            "requests still in flight after {GRACE:?}: dropping them"
        );
    }
    let all = MAX_CONNECTIONS as u32;
    let _ = tokio::time::timeout(FLUSH, slots.acquire_many(all)).await;
    drop_all.cancel();
    let _ = tokio::time::timeout(FLUSH, slots.acquire_many(all)).await;
}
