//! The statuses a server answers itself in the app's place (nginx's `error_page` for them, under
//! `wsgi_intercept_errors on`, as `uwsgi_intercept_errors` does for a proxied app): the app's
//! head says the status, and its body is not used.

/// A set of the statuses `error_page` can take (300 to 599).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InterceptedStatuses {
    bits: [u64; 5],
}

const FIRST: u16 = 300;
const END: u16 = 600;

impl InterceptedStatuses {
    pub const NONE: InterceptedStatuses = InterceptedStatuses { bits: [0; 5] };

    /// Adds `status` (one outside 300 to 599 is never intercepted, and is left out).
    pub fn insert(&mut self, status: u16) {
        if (FIRST..END).contains(&status) {
            let at = usize::from(status - FIRST);
            self.bits[at / 64] |= 1 << (at % 64);
        }
    }

    pub fn contains(&self, status: u16) -> bool {
        if !(FIRST..END).contains(&status) {
            return false;
        }
        let at = usize::from(status - FIRST);
        self.bits[at / 64] & (1 << (at % 64)) != 0
    }

    pub fn is_empty(&self) -> bool {
        self.bits == [0; 5]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_what_error_page_takes_and_nothing_else() {
        let mut set = InterceptedStatuses::NONE;
        assert!(set.is_empty());
        for status in [300, 404, 500, 502, 599, 200, 299, 600, 0, u16::MAX] {
            set.insert(status);
        }
        let held: Vec<u16> = (0..=u16::MAX).filter(|s| set.contains(*s)).collect();
        assert_eq!(held, [300, 404, 500, 502, 599]);
        assert!(!set.is_empty());
    }
}
