//! What a process remembers of products it saw sold out, so that `serve` answers the shoppers
//! who keep coming for them without a Redis command (docs/http-api.md).
//!
//! A flash sale is mostly refused shoppers: once the units are gone, every further request
//! for the product would cost Redis a call to learn what the last one learned. A product
//! answered sold out (or reserved down to nothing) is remembered with what was left, for
//! [`SOLD_OUT_MEMORY`]; a request for more than that is refused from memory meanwhile. A unit
//! that comes back (a cancel, an expiry, a release, a restock, in any process) is on sale
//! again on every process within that time, since a memory is never renewed but by Redis's
//! own answer. Only requests that cannot be a retry are answered from memory (`serve`, for
//! an event id it made itself): a retried reservation is answered by Redis, which knows
//! whether it holds a unit already.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a sold-out answer stands for a product: a unit back in Redis is on sale again
/// everywhere within this, and a product refused at thousands of requests a second costs
/// Redis one call in this time per process.
pub(crate) const SOLD_OUT_MEMORY: Duration = Duration::from_millis(50);
/// Products remembered at most; past that the forgotten ones are the stale.
const REMEMBERED: usize = 10_000;

#[derive(Default)]
pub(crate) struct SoldOut {
    /// product id -> (units left, when Redis said so)
    left: Mutex<HashMap<i64, (i64, Instant)>>,
}

impl SoldOut {
    /// Redis answered that `product_id` has `left` units.
    pub(crate) fn note(&self, product_id: i64, left: i64) {
        let mut map = self.left.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= REMEMBERED {
            map.retain(|_, (_, at)| at.elapsed() < SOLD_OUT_MEMORY);
        }
        map.insert(product_id, (left, Instant::now()));
    }

    /// A unit of `product_id` came back through this process: forget what was left.
    pub(crate) fn forget(&self, product_id: i64) {
        self.left.lock().unwrap_or_else(|e| e.into_inner()).remove(&product_id);
    }

    /// The units left when Redis last said so, if that was within [`SOLD_OUT_MEMORY`] and
    /// they are fewer than `qty`: the request would be refused.
    pub(crate) fn refuses(&self, product_id: i64, qty: i64) -> Option<i64> {
        let map = self.left.lock().unwrap_or_else(|e| e.into_inner());
        let &(left, at) = map.get(&product_id)?;
        (at.elapsed() < SOLD_OUT_MEMORY && qty > left).then_some(left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sold_out_answer_stands_for_a_short_while_and_only_for_more_than_was_left() {
        let memory = SoldOut::default();
        assert_eq!(memory.refuses(1, 1), None, "nothing known");
        memory.note(1, 0);
        memory.note(2, 3);
        assert_eq!(memory.refuses(1, 1), Some(0));
        assert_eq!(memory.refuses(2, 3), None, "three are left");
        assert_eq!(memory.refuses(2, 4), Some(3));
        memory.forget(1);
        assert_eq!(memory.refuses(1, 1), None, "a unit came back here");
        memory.note(1, 0);
        std::thread::sleep(SOLD_OUT_MEMORY + Duration::from_millis(5));
        assert_eq!(memory.refuses(1, 1), None, "Redis is asked again");
    }
}
