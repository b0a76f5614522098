//! A reservation, from the shopper's side and the order service's: what `stockq reserve`,
//! `POST /reserve`, `stockq status|confirm|cancel` and the order-service API call. Each change
//! in Redis is one script behind a `Queue` method; this module checks the arguments, counts
//! the answers, looks for a reservation's record in every shard and, when Redis no longer
//! keeps it, asks MySQL.
//!
//! - `reserve`: the seckill front door, taking stock and enqueuing the event in one step;
//! - `lifecycle`: what follows: the status object, confirm (payment done) and cancel.

mod lifecycle;
pub(crate) mod refusals;
mod reserve;

pub(crate) use lifecycle::{Asked, answer};
pub use lifecycle::{Status, cancel, confirm, status};
pub use reserve::{Request, check_hold, new_event_id, reserve, reserve_for, reserve_held, reserve_routed};

// Defined beside the Redis record they are read from: defined here, they would make `queue`
// import from this module, which imports `queue`.
pub use crate::queue::{Reservation, ReservationState};
