//! Room for the vendors: the ingest listener's connections, capped per peer address and in
//! total, with idle keep-alive connections closed at the cap to admit new ones.
//!
//! actix-web alone stops accepting at `max_connections`: 200 clients that each ask for
//! `/healthz` every 3 s hold every slot (keep-alive lasts longer than their pause), and a
//! vendor that never retries loses its event. So the listener's own cap is set above ours,
//! and each accepted connection is registered here (`HttpServer::on_connect`):
//!
//! - a peer address already holding `max_connections_per_peer` has its new connection
//!   closed at once (reason `peer_cap`);
//! - at `max_connections`, the connection idle the longest (no request in progress) is
//!   closed to make room (`idle_at_cap`); if every connection has a request in progress,
//!   the new one is closed instead (`full`).
//!
//! "Closed" is `shutdown(2)` on a duplicate of the socket's descriptor, which we own (so it
//! can never name another socket): actix reads the end of the stream and drops the
//! connection as if the client had hung up. A connection is busy from the moment its
//! request reaches the app ([`track`]) until its response has been handed back.
//!
//! Its cost, in three alternating loadgen pairs with and without it (`--traffic agntix`,
//! BENCHMARKS.md): the same closed-loop ratio within the run-to-run spread, CPU per request
//! at most ~5% apart, either way.

use std::any::Any;
use std::collections::HashMap;
use std::net::{IpAddr, Shutdown};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use actix_web::dev::Extensions;

use crate::metrics::Metrics;

/// The ingest listener's connections.
pub struct Connections {
    max: usize,
    per_peer: usize,
    metrics: Arc<Metrics>,
    epoch: Instant,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    open: HashMap<u64, Arc<Conn>>,
    by_peer: HashMap<IpAddr, usize>,
}

struct Conn {
    id: u64,
    peer: IpAddr,
    /// A duplicate of the connection's descriptor, for `shutdown`.
    socket: std::net::TcpStream,
    /// Requests in progress.
    busy: AtomicU32,
    /// When its last request ended (or it connected), in ms since `epoch`.
    idle_since: AtomicU64,
}

/// Kept in a connection's extensions: its registration, undone when actix drops it.
pub struct Tracked {
    conn: Arc<Conn>,
    registry: Arc<Connections>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.registry.forget(&self.conn);
    }
}

impl Connections {
    pub fn new(max: usize, per_peer: usize, metrics: Arc<Metrics>) -> Arc<Connections> {
        Arc::new(Connections {
            max,
            per_peer,
            metrics,
            epoch: Instant::now(),
            inner: Mutex::new(Inner::default()),
        })
    }

    /// The cap to give actix's listener (per worker): above ours, so a connection past our
    /// cap is still accepted and can take an idle one's place.
    pub fn listener_cap(&self) -> usize {
        self.max.saturating_add(self.max / 4 + 16)
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// `HttpServer::on_connect`: registers a new connection, or closes it or another.
    pub fn on_connect(self: &Arc<Self>, io: &dyn Any, extensions: &mut Extensions) {
        let Some(stream) = io.downcast_ref::<actix_web::rt::net::TcpStream>() else {
            return;
        };
        let (Ok(peer), Ok(fd)) = (stream.peer_addr(), stream.as_fd().try_clone_to_owned()) else {
            return;
        };
        let socket = std::net::TcpStream::from(fd);
        let peer = canonical(peer.ip());
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.by_peer.get(&peer).copied().unwrap_or(0) >= self.per_peer {
            drop(inner);
            let _ = socket.shutdown(Shutdown::Both);
            self.metrics.connection_closed("peer_cap");
            return;
        }
        if inner.open.len() >= self.max {
            let idlest = inner
                .open
                .values()
                .filter(|c| c.busy.load(Ordering::SeqCst) == 0)
                .min_by_key(|c| c.idle_since.load(Ordering::SeqCst))
                .cloned();
            match idlest {
                Some(idle) => {
                    inner.remove(&idle);
                    let _ = idle.socket.shutdown(Shutdown::Both);
                    self.metrics.connection_closed("idle_at_cap");
                }
                None => {
                    drop(inner);
                    let _ = socket.shutdown(Shutdown::Both);
                    self.metrics.connection_closed("full");
                    return;
                }
            }
        }
        inner.next_id += 1;
        let conn = Arc::new(Conn {
            id: inner.next_id,
            peer,
            socket,
            busy: AtomicU32::new(0),
            idle_since: AtomicU64::new(self.now_ms()),
        });
        inner.open.insert(conn.id, conn.clone());
        *inner.by_peer.entry(peer).or_default() += 1;
        drop(inner);
        extensions.insert(Tracked {
            conn,
            registry: self.clone(),
        });
    }

    fn forget(&self, conn: &Conn) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.remove(conn);
    }
}

impl Inner {
    /// Forgets a connection once (it may be closed to make room, then dropped by actix).
    fn remove(&mut self, conn: &Conn) {
        if self.open.remove(&conn.id).is_none() {
            return;
        }
        if let Some(n) = self.by_peer.get_mut(&conn.peer) {
            *n -= 1;
            if *n == 0 {
                self.by_peer.remove(&conn.peer);
            }
        }
    }
}

/// A v4 peer that reached a dual-stack listener as `::ffff:a.b.c.d` is that v4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Marks a request's connection busy while the request is in progress.
pub struct Busy {
    conn: Arc<Conn>,
    registry: Arc<Connections>,
}

/// Marks the connection of `request` busy until the returned guard is dropped.
pub fn track(request: &actix_web::dev::ServiceRequest) -> Option<Busy> {
    let tracked = request.conn_data::<Tracked>()?;
    tracked.conn.busy.fetch_add(1, Ordering::SeqCst);
    Some(Busy {
        conn: tracked.conn.clone(),
        registry: tracked.registry.clone(),
    })
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.conn
            .idle_since
            .store(self.registry.now_ms(), Ordering::SeqCst);
        self.conn.busy.fetch_sub(1, Ordering::SeqCst);
    }
}
