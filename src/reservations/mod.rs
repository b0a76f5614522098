//! A reservation, from the shopper's side and the order service's: what `stockq reserve`,
//! `POST /reserve` and the order-service API call. The Redis half of each step is one
//! script behind a `Queue` method; this module checks the arguments, finds the shard and, for
//! a reservation whose record Redis no longer keeps, asks MySQL.
//!
//! - `reserve`: the seckill front door, taking stock and enqueuing the event in one step;
//! - `lifecycle`: what follows: the status object, confirm (payment done) and cancel.

mod lifecycle;
mod reserve;

pub(crate) use lifecycle::{Asked, answer};
pub use lifecycle::{Status, cancel, confirm, status};
pub use reserve::{Request, check_hold, new_event_id, reserve, reserve_for, reserve_held};

pub use crate::queue::{Reservation, ReservationState};
