//! Guessing the admin token, slowed down: each peer address may fail [`FREE_FAILURES`]
//! times; every failure after that shuts it out for a delay that doubles (1 s, 2 s, 4 s, …
//! up to [`MAX_DELAY`]), during which every admin request and console login from it is
//! answered 429 with `Retry-After`, the right token too, and counts as one more failure. A success forgets the peer's
//! failures; so do [`FORGET_AFTER`] without one.
//!
//! Failures are logged as a rate: the first of each minute at once, then one line per
//! minute with how many there were and from how many peers (a guessing run would
//! otherwise write thousands of lines a second).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Failures allowed before the first shut-out.
pub const FREE_FAILURES: u32 = 10;
/// The longest a peer is shut out at once.
pub const MAX_DELAY: Duration = Duration::from_secs(15 * 60);
/// A peer's failures are forgotten after this long without one.
const FORGET_AFTER: Duration = Duration::from_secs(30 * 60);
/// Peers remembered at once; past it the forgotten and the shut-out-no-longer go first.
const MAX_PEERS: usize = 100_000;
/// Failures are summed in the log over this window.
const LOG_WINDOW: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct Guard {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    peers: HashMap<IpAddr, Peer>,
    window: Option<Window>,
}

struct Peer {
    failures: u32,
    last: Instant,
    blocked_until: Option<Instant>,
}

struct Window {
    started: Instant,
    failures: u64,
    peers: HashSet<IpAddr>,
}

/// A peer that must wait before trying again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait(pub Duration);

impl Wait {
    /// Whole seconds for `Retry-After` (at least 1).
    pub fn seconds(&self) -> u64 {
        self.0.as_secs() + u64::from(self.0.subsec_nanos() > 0)
    }
}

impl Guard {
    /// Whether `peer` may try a token now. A peer still shut out is refused, and the
    /// refused attempt counts as one more failure: hammering only makes the wait longer.
    pub fn admit(&self, peer: Option<IpAddr>, what: &'static str) -> Result<(), Wait> {
        let Some(ip) = peer else { return Ok(()) };
        let now = Instant::now();
        let blocked = {
            let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            inner
                .peers
                .get(&ip)
                .and_then(|p| p.blocked_until)
                .is_some_and(|until| until > now)
        };
        match blocked {
            false => Ok(()),
            true => Err(self.failed(peer, what).unwrap_or(Wait(MAX_DELAY))),
        }
    }

    /// A wrong token from `peer` (`what`: "admin API" or "console login"): returns the wait
    /// it now has, if any.
    pub fn failed(&self, peer: Option<IpAddr>, what: &'static str) -> Option<Wait> {
        let now = Instant::now();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.log(peer, what, now);
        let peer = peer?;
        if inner.peers.len() >= MAX_PEERS && !inner.peers.contains_key(&peer) {
            inner.peers.retain(|_, p| {
                p.blocked_until.is_some_and(|u| u > now) || now - p.last < FORGET_AFTER
            });
            if inner.peers.len() >= MAX_PEERS {
                return None;
            }
        }
        let entry = inner.peers.entry(peer).or_insert(Peer {
            failures: 0,
            last: now,
            blocked_until: None,
        });
        if now - entry.last >= FORGET_AFTER {
            entry.failures = 0;
        }
        entry.failures = entry.failures.saturating_add(1);
        entry.last = now;
        let over = entry.failures.checked_sub(FREE_FAILURES)?.checked_sub(1);
        let delay = match over {
            None => return None,
            Some(n) => Duration::from_secs(1)
                .saturating_mul(1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX))
                .min(MAX_DELAY),
        };
        entry.blocked_until = Some(now + delay);
        Some(Wait(delay))
    }

    /// The right token from `peer`: its failures are forgotten.
    pub fn succeeded(&self, peer: Option<IpAddr>) {
        if let Some(peer) = peer {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            inner.peers.remove(&peer);
        }
    }
}

impl Inner {
    fn log(&mut self, peer: Option<IpAddr>, what: &'static str, now: Instant) {
        let window = match &mut self.window {
            Some(w) if now - w.started < LOG_WINDOW => w,
            _ => {
                if let Some(ended) = self.window.take()
                    && ended.failures > 1
                {
                    tracing::warn!(
                        failures = ended.failures,
                        peers = ended.peers.len(),
                        window_seconds = LOG_WINDOW.as_secs(),
                        "Wrong admin tokens in the last window"
                    );
                }
                tracing::warn!(
                    peer = %peer.map_or("unknown".into(), |p| p.to_string()),
                    what,
                    "Wrong admin token; further failures are summed once a minute"
                );
                self.window.insert(Window {
                    started: now,
                    failures: 0,
                    peers: HashSet::new(),
                })
            }
        };
        window.failures += 1;
        if let Some(peer) = peer
            && window.peers.len() < 10_000
        {
            window.peers.insert(peer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u8) -> Option<IpAddr> {
        Some(IpAddr::from([192, 0, 2, n]))
    }

    #[tokio::test(start_paused = true)]
    async fn failures_past_the_free_ones_shut_a_peer_out_for_growing_delays() {
        let guard = Guard::default();
        for _ in 0..FREE_FAILURES {
            assert_eq!(guard.admit(peer(1), "admin API"), Ok(()));
            assert_eq!(guard.failed(peer(1), "admin API"), None);
        }
        assert_eq!(
            guard.failed(peer(1), "admin API"),
            Some(Wait(Duration::from_secs(1)))
        );
        // Each attempt while shut out is refused and doubles the wait.
        let waits: Vec<u64> = (0..4)
            .map(|_| guard.admit(peer(1), "admin API").unwrap_err().seconds())
            .collect();
        assert_eq!(waits, [2, 4, 8, 16]);
        assert_eq!(
            guard.admit(peer(2), "admin API"),
            Ok(()),
            "other peers are not affected"
        );
        tokio::time::advance(Duration::from_secs(17)).await;
        assert_eq!(guard.admit(peer(1), "admin API"), Ok(()), "the wait ends");
        // A success forgets the failures.
        guard.succeeded(peer(1));
        assert_eq!(guard.failed(peer(1), "admin API"), None);
        // The delay stops growing at MAX_DELAY.
        for _ in 0..60 {
            guard.failed(peer(3), "console login");
        }
        assert_eq!(
            guard.failed(peer(3), "console login"),
            Some(Wait(MAX_DELAY))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_forgotten_after_a_quiet_half_hour() {
        let guard = Guard::default();
        for _ in 0..FREE_FAILURES {
            guard.failed(peer(1), "admin API");
        }
        tokio::time::advance(FORGET_AFTER).await;
        assert_eq!(guard.failed(peer(1), "admin API"), None);
    }
}
