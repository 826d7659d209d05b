//! The one clock: wall time (unix ms) for what is stored and shared between replicas, and
//! the conversion to tokio instants for what a task waits for.
//!
//! Production uses [`Clock::system`]. Tests use [`Clock::manual`] with tokio's paused time
//! and move both together with [`Clock::advance`], so a retry due in two hours is tested
//! without waiting for it. A manual clock is read the same from any thread (the SQLite
//! writer's included), which tokio's paused time alone is not.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

#[derive(Debug, Clone, Default)]
pub struct Clock {
    /// `None` = the system's wall clock.
    manual: Option<Arc<AtomicI64>>,
}

impl Clock {
    pub fn system() -> Clock {
        Clock { manual: None }
    }

    /// A clock that stands still at `unix_ms` until [`Clock::advance`] moves it.
    pub fn manual(unix_ms: i64) -> Clock {
        Clock {
            manual: Some(Arc::new(AtomicI64::new(unix_ms))),
        }
    }

    /// Milliseconds since the unix epoch.
    pub fn now_ms(&self) -> i64 {
        match &self.manual {
            Some(ms) => ms.load(Ordering::Acquire),
            None => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
        }
    }

    /// The tokio instant at which the clock reads `unix_ms` (now, if it has passed).
    pub fn instant_at(&self, unix_ms: i64) -> Instant {
        Instant::now() + Duration::from_millis((unix_ms - self.now_ms()).max(0) as u64)
    }

    /// Moves a manual clock forward (tests move tokio's paused time with it, `clock::advance`).
    ///
    /// # Panics
    /// On the system clock, which no one moves.
    pub fn advance(&self, by: Duration) {
        let ms = self
            .manual
            .as_ref()
            .expect("only a manual clock is advanced");
        ms.fetch_add(by.as_millis() as i64, Ordering::AcqRel);
    }
}

/// Moves a manual clock and tokio's paused time forward together.
#[cfg(test)]
pub(crate) async fn advance(clock: &Clock, by: Duration) {
    clock.advance(by);
    tokio::time::advance(by).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_manual_clock_moves_with_paused_time_only_when_advanced() {
        let clock = Clock::manual(1_000_000);
        let due = clock.instant_at(1_000_000 + 90_000);
        assert_eq!(due - Instant::now(), Duration::from_secs(90));
        advance(&clock, Duration::from_secs(60)).await;
        assert_eq!(clock.now_ms(), 1_060_000);
        assert_eq!(due - Instant::now(), Duration::from_secs(30));
        // Read from another thread, as the SQLite writer does.
        let c = clock.clone();
        let seen = std::thread::spawn(move || c.now_ms()).join().unwrap();
        assert_eq!(seen, 1_060_000);
        assert_eq!(clock.instant_at(0), Instant::now(), "the past is now");
    }

    #[test]
    fn the_system_clock_reads_wall_time() {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        assert!((Clock::system().now_ms() - wall).abs() < 5_000);
    }
}
