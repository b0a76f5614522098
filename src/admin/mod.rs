//! Operators' actions: restocks applied to both stores together, dead letters, statistics,
//! pauses and the audit of every action.

pub(crate) mod control;
pub(crate) mod dead;
pub(crate) mod search;
pub(crate) mod stats;
pub(crate) mod stock;

/// A window on a long listing, so that an operator or a dashboard can page through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Page {
    /// Entries skipped before the window.
    pub(crate) offset: usize,
    /// Entries in the window; `None` for every entry after the offset.
    pub(crate) limit: Option<usize>,
}

impl Page {
    /// The page of the command line, where a limit of 0 means no limit.
    pub(crate) fn new(offset: usize, limit: usize) -> Page {
        Page { offset, limit: (limit > 0).then_some(limit) }
    }

    /// This page of `items`.
    pub(crate) fn slice<'a, T>(&self, items: &'a [T]) -> &'a [T] {
        let rest = items.get(self.offset..).unwrap_or(&[]);
        match self.limit {
            Some(n) => &rest[..n.min(rest.len())],
            None => rest,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Page;

    #[test]
    fn a_page_skips_then_takes_and_a_limit_of_0_takes_the_rest() {
        let items: Vec<i32> = (1..=10).collect();
        assert_eq!(Page::new(0, 3).slice(&items), [1, 2, 3]);
        assert_eq!(Page::new(8, 3).slice(&items), [9, 10]);
        assert_eq!(Page::new(4, 0).slice(&items), [5, 6, 7, 8, 9, 10]);
        assert!(Page::new(10, 0).slice(&items).is_empty());
        assert!(Page::new(11, 5).slice(&items).is_empty());
    }
}
