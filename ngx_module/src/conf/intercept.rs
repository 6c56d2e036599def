//! `wsgi_intercept_errors on|off`: whether nginx answers an app's statuses that have an
//! `error_page` with that page (see [`crate::intercept_errors`]).

use nginx_sys::ngx_flag_t;

use super::merge_value;
use super::streaming::UNSET_FLAG;

/// One level's `wsgi_intercept_errors` (nginx's flag: unset, 0 or 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InterceptErrors(pub ngx_flag_t);

impl Default for InterceptErrors {
    fn default() -> Self {
        InterceptErrors(UNSET_FLAG)
    }
}

impl InterceptErrors {
    /// Off unless a level says on, as `uwsgi_intercept_errors`.
    pub(crate) fn merge(&mut self, parent: &InterceptErrors) {
        merge_value(&mut self.0, parent.0, UNSET_FLAG, 0);
    }

    pub(crate) fn on(&self) -> bool {
        self.0 == 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_unless_a_level_says_on() {
        let mut top = InterceptErrors::default();
        top.merge(&InterceptErrors::default());
        assert!(!top.on());
        let mut location = InterceptErrors::default();
        location.merge(&InterceptErrors(1));
        assert!(location.on());
        let mut own = InterceptErrors(0);
        own.merge(&InterceptErrors(1));
        assert!(!own.on());
    }
}
