//! The HTTP server under `serve` and the `/healthz` + `/metrics` endpoint of the other
//! processes: HTTP/1.1 with bounds on everything a client controls.
//!
//! - At most `STOCKQ_MAX_CONNECTIONS` connections at once ([`Limits`]); past that, new ones
//!   wait in the listen backlog until one closes.
//! - At most `STOCKQ_MAX_CONNECTIONS_PER_ADDRESS` of them from one client address (the TCP
//!   peer, an IPv6 one by its /64), so that one client cannot take every connection and
//!   leave the backlog to everyone else. A connection past that is answered 503 at once and
//!   closed, without its request being read: waiting in the backlog would hold everyone
//!   behind it, and a proxy in front then tells its client why.
//! - Every request carries its [`Client`](crate::http::client::Client), and forwarded headers
//!   only from a trusted proxy ([`crate::http::client`]).
//! - Request heads up to 16 KiB (431 past that), targets up to 8 KiB (414), bodies up to
//!   [`MAX_BODY`] (413); time limits per connection as in [`crate::http::conn`].
//! - On shutdown: stop accepting, close idle connections, let requests in flight finish for
//!   up to [`GRACE`], then drop every connection still open (half-sent requests, clients
//!   that do not read), so that the process exits within seconds whatever clients do.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::Service as _;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_ADDRESS, HttpSettings, TrustedProxies,
};
use crate::error::{Error, Result};
use crate::http::answer;
use crate::http::client;
use crate::http::conn::Guarded;

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

/// How many connections the server holds, and whose forwarded headers it believes.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub(crate) max_connections: u32,
    pub(crate) per_address: u32,
    pub(crate) trusted: Arc<TrustedProxies>,
}

impl Limits {
    pub(crate) fn of(http: &HttpSettings) -> Limits {
        Limits {
            max_connections: http.max_connections,
            per_address: http.max_connections_per_address,
            trusted: Arc::new(http.trusted_proxies.clone()),
        }
    }
}

impl Default for Limits {
    /// The defaults of the settings, and no trusted proxy.
    fn default() -> Limits {
        Limits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            per_address: DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
            trusted: Arc::default(),
        }
    }
}

/// Serves `router` on `addr` until `shutdown`, then drains as the module docs say.
pub(crate) async fn serve(
    addr: SocketAddr,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> Result<()> {
    let listener =
        TcpListener::bind(addr).await.map_err(|source| Error::Listen { port: addr.port(), source })?;
    tracing::info!(%addr, "serving HTTP");
    let in_flight = Arc::new(watch::Sender::new(0usize));
    let service = TowerToHyperService::new(harden(router, in_flight.clone(), limits.trusted.clone()));
    let slots = Arc::new(Semaphore::new(limits.max_connections as usize));
    let addresses = Addresses::new(limits.per_address);
    let drop_all = CancellationToken::new();
    while let Some((stream, peer, slot)) = accept(&listener, &slots, &shutdown).await {
        let Some(own) = addresses.take(peer.ip()) else {
            refuse(stream, peer);
            continue;
        };
        let stop = (shutdown.clone(), drop_all.clone());
        tokio::spawn(connection(stream, peer, service.clone(), (slot, own), stop));
    }
    drop(listener);
    drain(&in_flight, &slots, limits.max_connections, &drop_all).await;
    Ok(())
}

/// The router with the limits and the JSON error answers, counting requests in flight.
fn harden(router: Router, in_flight: Arc<watch::Sender<usize>>, trusted: Arc<TrustedProxies>) -> Router {
    router
        .layer(middleware::from_fn(answer::limit_uri))
        .layer(middleware::from_fn_with_state(trusted, client::identify))
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

/// The connections open from each client address ([`client::key`]), up to a cap. Holds no
/// more entries than there are connections.
struct Addresses {
    open: Arc<Mutex<HashMap<IpAddr, u32>>>,
    cap: u32,
}

/// One connection of an address, given back when dropped.
struct AddressSlot {
    open: Arc<Mutex<HashMap<IpAddr, u32>>>,
    key: IpAddr,
}

impl Addresses {
    fn new(cap: u32) -> Addresses {
        Addresses { open: Arc::default(), cap }
    }

    /// A connection for `peer`, unless its address holds the cap already.
    fn take(&self, peer: IpAddr) -> Option<AddressSlot> {
        let key = client::key(peer);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(key).or_insert(0);
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(AddressSlot { open: self.open.clone(), key })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// Answers a connection past its address's cap with 503 and closes it, all without waiting:
/// the accept loop runs this, and a client that does not read must not stall it.
fn refuse(stream: TcpStream, peer: SocketAddr) {
    let answer = answer::whole(
        StatusCode::SERVICE_UNAVAILABLE,
        "too many connections from this address; close some or try again later",
    );
    // a new socket's send buffer takes the whole answer; if not, the client sees a close
    let _ = stream.try_write(&answer);
    // what already came (a request head, at most a few reads' worth) is read, so that the
    // close is a FIN rather than a reset, which may make the client's system drop the answer
    let mut sink = [0u8; 4096];
    for _ in 0..4 {
        if !matches!(stream.try_read(&mut sink), Ok(n) if n > 0) {
            break;
        }
    }
    if crate::backoff::may_log("connections over the cap of their address") {
        tracing::warn!(
            client = %peer.ip(),
            "a client address holds its STOCKQ_MAX_CONNECTIONS_PER_ADDRESS connections: \
             refusing more (logged once every few seconds)"
        );
    }
}

/// The next connection, its peer and its slot, or None once `shutdown` is cancelled.
async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
    shutdown: &CancellationToken,
) -> Option<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
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
            Ok((stream, peer)) => return Some((stream, peer, slot)),
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
    peer: SocketAddr,
    service: Service,
    _slots: (OwnedSemaphorePermit, AddressSlot),
    (shutdown, drop_all): (CancellationToken, CancellationToken),
) {
    let _ = stream.set_nodelay(true);
    let io = TokioIo::new(Guarded::new(stream));
    let mut builder = http1::Builder::new();
    builder.max_header_size(MAX_HEAD).max_buf_size(MAX_BUFFER).writev(false).header_read_timeout(None);
    // the peer, for `client::identify`
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        service.call(request)
    });
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
async fn drain(in_flight: &watch::Sender<usize>, slots: &Semaphore, all: u32, drop_all: &CancellationToken) {
    let mut requests = in_flight.subscribe();
    if tokio::time::timeout(GRACE, requests.wait_for(|n| *n == 0)).await.is_err() {
        tracing::warn!(
            requests = *in_flight.borrow(),
            "requests still in flight after {GRACE:?}: dropping them"
        );
    }
    let _ = tokio::time::timeout(FLUSH, slots.acquire_many(all)).await;
    drop_all.cancel();
    let _ = tokio::time::timeout(FLUSH, slots.acquire_many(all)).await;
}
