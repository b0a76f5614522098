//! Wrong secrets counted per client, so that a token cannot be guessed at the speed of the
//! network, and so that one client's guesses lock out that client only (docs/security.md).
//!
//! Each client address ([`Client::key`]) may try [`MAX_FAILURES`] wrong secrets in a
//! [`WINDOW`] that starts at its first failure; then every try from it, a right secret too,
//! is refused until the window ends. A right secret must be refused as well: were it let
//! through, the answer to the next guess would still tell whether it was right.
//!
//! A try is counted before the secret is compared and given back when it was right, so
//! that guesses sent all at once cannot pass the check together before any is counted.
//!
//! Memory is bounded: at most [`MAX_CLIENTS`] addresses are tracked; a full table first
//! forgets the addresses whose window has ended, then the one whose window began first.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;

use crate::http::answer::error;
use crate::http::client::Client;

/// Wrong secrets a client may try per window.
pub(crate) const MAX_FAILURES: u32 = 10;
/// How long a client's failures count, from the first.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);
/// Client addresses tracked at most: about 64 bytes each.
const MAX_CLIENTS: usize = 10_000;

/// One client's failures in its current window.
#[derive(Debug, Clone, Copy)]
struct Tally {
    since: Instant,
    failures: u32,
    /// Whether a refusal in this window was logged already.
    logged: bool,
}

/// The failures of every client, for one secret.
#[derive(Clone, Default)]
pub(crate) struct Throttle(Arc<Mutex<HashMap<IpAddr, Tally>>>);

/// A try taken: a failure, unless [`Try::succeeded`] gives it back.
#[must_use = "a try counts as a failure unless it succeeded"]
pub(crate) struct Try {
    throttle: Throttle,
    key: IpAddr,
    since: Instant,
}

/// A client that must wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Throttled {
    /// Until its window ends.
    pub(crate) retry_after: Duration,
    /// Whether this is the first refusal of the window (the one worth a log line).
    pub(crate) first: bool,
}

impl Throttle {
    fn tallies(&self) -> MutexGuard<'_, HashMap<IpAddr, Tally>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a try for `client`, or says how long it must wait.
    pub(crate) fn try_secret(&self, client: Client) -> Result<Try, Throttled> {
        self.try_at(client.key(), Instant::now())
    }

    fn try_at(&self, key: IpAddr, now: Instant) -> Result<Try, Throttled> {
        let mut tallies = self.tallies();
        if !tallies.contains_key(&key) {
            make_room(&mut tallies, now);
        }
        let tally = tallies.entry(key).or_insert(Tally { since: now, failures: 0, logged: false });
        let elapsed = now.saturating_duration_since(tally.since);
        if elapsed >= WINDOW {
            *tally = Tally { since: now, failures: 0, logged: false };
        }
        if tally.failures >= MAX_FAILURES {
            let first = !tally.logged;
            tally.logged = true;
            return Err(Throttled { retry_after: WINDOW.saturating_sub(elapsed), first });
        }
        tally.failures += 1;
        Ok(Try { throttle: self.clone(), key, since: tally.since })
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.tallies().len()
    }
}

impl Try {
    /// The secret was right: the try is given back.
    pub(crate) fn succeeded(self) {
        let mut tallies = self.throttle.tallies();
        if let Some(tally) = tallies.get_mut(&self.key)
            && tally.since == self.since
        {
            tally.failures = tally.failures.saturating_sub(1);
            if tally.failures == 0 {
                tallies.remove(&self.key);
            }
        }
    }
}

/// Makes room for one more address in a full table.
fn make_room(tallies: &mut HashMap<IpAddr, Tally>, now: Instant) {
    if tallies.len() < MAX_CLIENTS {
        return;
    }
    tallies.retain(|_, tally| now.saturating_duration_since(tally.since) < WINDOW);
    if tallies.len() >= MAX_CLIENTS
        && let Some(oldest) = tallies.iter().min_by_key(|(_, tally)| tally.since).map(|(key, _)| *key)
    {
        tallies.remove(&oldest);
    }
}

impl Throttled {
    /// The 429 answer, with `Retry-After` in whole seconds.
    pub(crate) fn answer(self, what: &str) -> Response {
        let seconds = self.retry_after.as_secs() + u64::from(self.retry_after.subsec_nanos() > 0);
        let mut answer = error(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many wrong {what}s from this address; try again in {seconds}s"),
        );
        answer.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn failures_lock_out_their_own_address_only_until_the_window_ends() {
        let throttle = Throttle::default();
        let (attacker, operator) = (ip("127.0.0.2"), ip("127.0.0.3"));
        let start = Instant::now();
        for _ in 0..MAX_FAILURES {
            drop(throttle.try_at(attacker, start).unwrap());
        }
        let refused = throttle.try_at(attacker, start + Duration::from_secs(20)).err().unwrap();
        assert_eq!(refused, Throttled { retry_after: Duration::from_secs(40), first: true });
        let again = throttle.try_at(attacker, start + Duration::from_secs(21)).err().unwrap();
        assert!(!again.first, "one log line per window");
        throttle.try_at(operator, start).unwrap().succeeded();
        assert!(throttle.try_at(attacker, start + WINDOW).is_ok(), "a new window");
    }

    #[test]
    fn a_right_secret_costs_nothing_and_guesses_at_once_are_all_counted() {
        let throttle = Throttle::default();
        let client = ip("10.0.0.1");
        let now = Instant::now();
        for _ in 0..100 {
            throttle.try_at(client, now).unwrap().succeeded();
        }
        assert_eq!(throttle.tracked(), 0, "nothing kept for a client that only succeeds");
        let in_flight: Vec<_> = (0..MAX_FAILURES).map(|_| throttle.try_at(client, now).unwrap()).collect();
        assert!(throttle.try_at(client, now).is_err(), "the eleventh guess in flight");
        drop(in_flight);
        assert!(throttle.try_at(client, now).is_err());
    }

    #[test]
    fn a_try_given_back_after_its_window_ended_leaves_the_new_window_alone() {
        let throttle = Throttle::default();
        let client = ip("10.0.0.1");
        let start = Instant::now();
        let old = throttle.try_at(client, start).unwrap();
        drop(throttle.try_at(client, start + WINDOW).unwrap());
        old.succeeded();
        assert_eq!(throttle.tallies()[&client].failures, 1);
    }

    #[test]
    fn the_table_is_bounded_and_forgets_ended_windows_first() {
        let throttle = Throttle::default();
        let start = Instant::now();
        let attacker = ip("192.0.2.1");
        for _ in 0..MAX_FAILURES {
            drop(throttle.try_at(attacker, start + Duration::from_secs(30)).unwrap());
        }
        for n in 0..MAX_CLIENTS as u32 - 1 {
            drop(throttle.try_at(IpAddr::from((0x0a00_0000 + n).to_be_bytes()), start).unwrap());
        }
        assert_eq!(throttle.tracked(), MAX_CLIENTS);
        // a minute on, the first clients' windows have ended: they make the room
        drop(throttle.try_at(ip("198.51.100.1"), start + WINDOW).unwrap());
        assert_eq!(throttle.tracked(), 2);
        assert!(throttle.try_at(attacker, start + WINDOW).is_err(), "the attacker is still counted");
        // full of live windows, the one that began first goes
        let later = start + WINDOW + Duration::from_secs(1);
        for n in 0..MAX_CLIENTS as u32 {
            drop(throttle.try_at(IpAddr::from((0x0b00_0000 + n).to_be_bytes()), later).unwrap());
        }
        assert_eq!(throttle.tracked(), MAX_CLIENTS);
        assert!(!throttle.tallies().contains_key(&attacker));
    }
}
