//! Group commit for reservations: the reservations that arrive at one shard while its call is
//! in flight go to Redis together, as one call of `lua/reserve_group.lua`.
//!
//! A flash sale's time goes to Redis's one core, and a reservation alone pays for a whole
//! call: the protocol, the script's start, the clock, its product's stock and limit, the
//! sequence, the in-flight units and the push. A group pays for those once. Nothing waits
//! for a group to fill: a reservation that finds the shard idle goes at once, alone; the
//! ones that arrive meanwhile go together when the call comes back (at most
//! [`MAX_GROUP`]). Each is decided in arrival order, exactly as it would be alone, and one
//! with bad arguments fails alone.
//!
//! One [`Grouper`] per shard (so one group per slot on a cluster): a task that owns the
//! shard's channel of reservations and keeps at most [`IN_FLIGHT`] calls going. The
//! callers keep what is theirs: the sequence watch ([`Queue::observe_seq`]) and the
//! answers' meaning.

use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};

use super::conn::Conn;
use super::{CALL_TIMEOUT, Keys, millis, scripts};
use crate::error::{Error, Result, bounded};

/// The most reservations in one call: a call of 128 holds Redis for well under a
/// millisecond, and groups that large only form when that many arrive within one call.
pub(crate) const MAX_GROUP: usize = 128;
/// Calls in flight at once per shard: two keep Redis busy while an answer travels back.
const IN_FLIGHT: usize = 2;
/// Values per reservation in reserve_group.lua's flat answer.
const ANSWER_WIDTH: usize = 7;
/// Reservations waiting for a call, per shard, before callers wait to hand theirs over.
const QUEUE_DEPTH: usize = 8192;

/// One reservation, as it goes into a group.
pub(crate) struct Ask {
    pub(crate) event_id: String,
    pub(crate) product_id: i64,
    pub(crate) qty: i64,
    pub(crate) buyer: Option<String>,
    pub(crate) hold: Option<std::time::Duration>,
}

/// Its answer: the values reserve.lua would have returned for it alone.
pub(crate) type Answer = Result<Vec<redis::Value>>;

type Waiting = (Ask, oneshot::Sender<Answer>);

/// The handle of a shard's group-commit task; cheap to clone.
#[derive(Clone)]
pub(crate) struct Grouper {
    tx: mpsc::Sender<Waiting>,
}

impl Grouper {
    /// Starts the task for the shard of `keys` on `conn`. It ends when every handle is gone.
    pub(crate) fn start(conn: Conn, keys: Keys) -> Grouper {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(run(conn, keys, rx));
        Grouper { tx }
    }

    /// Reserves in the next group; the answer is the reservation's own.
    pub(crate) async fn reserve(&self, ask: Ask) -> Answer {
        let (reply, answer) = oneshot::channel();
        if self.tx.send((ask, reply)).await.is_err() {
            return Err(stopped());
        }
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }
}

fn stopped() -> Error {
    Error::NotConnected {
        store: crate::error::Store::Redis,
        why: "the reservation group task stopped".into(),
    }
}

async fn run(conn: Conn, keys: Keys, mut rx: mpsc::Receiver<Waiting>) {
    let calls = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        // a free call first: while every call is in flight, reservations gather in the channel
        let Ok(permit) = calls.clone().acquire_owned().await else { return };
        let Some(first) = rx.recv().await else { return };
        let mut group = Vec::with_capacity(MAX_GROUP);
        group.push(first);
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        let (conn, keys) = (conn.clone(), keys.clone());
        tokio::spawn(async move {
            call(conn, &keys, group).await;
            drop(permit);
        });
    }
}

/// One call for `group`, each answer to its caller.
async fn call(mut conn: Conn, keys: &Keys, group: Vec<Waiting>) {
    let mut invocation = scripts::RESERVE_GROUP.prepare_invoke();
    invocation
        .key(keys.pending())
        .key(keys.seq())
        .key(keys.inflight())
        .key(keys.holds())
        .key(keys.limits())
        .key(keys.bought());
    for (ask, _) in &group {
        invocation
            .key(keys.stock(ask.product_id))
            .key(keys.record(&ask.event_id))
            .arg(ask.event_id.as_str())
            .arg(ask.product_id)
            .arg(ask.qty)
            .arg(ask.buyer.as_deref().unwrap_or(""))
            .arg(ask.hold.map_or(0, millis));
    }
    let reply: Result<Vec<redis::Value>> =
        bounded("redis (reserve)", CALL_TIMEOUT, invocation.invoke_async(&mut conn)).await;
    match reply {
        Ok(answers) => {
            // six values a reservation, in order (reserve_group.lua)
            let mut answers = answers.into_iter();
            for (_, reply) in group {
                let values: Vec<redis::Value> = answers.by_ref().take(ANSWER_WIDTH).collect();
                let answer = if values.len() == ANSWER_WIDTH {
                    Ok(values)
                } else {
                    Err(Error::Redis(redis::RedisError::from((
                        redis::ErrorKind::UnexpectedReturnType,
                        "reserve_group.lua answered fewer reservations than it was given",
                    ))))
                };
                let _ = reply.send(answer);
            }
        }
        Err(e) => {
            // every reservation of the group failed as the call did
            let shared = Arc::new(e);
            for (_, reply) in group {
                let _ = reply.send(Err(Error::Shared(shared.clone())));
            }
        }
    }
}
