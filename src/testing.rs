//! Unit-test support: one interpreter for the whole test binary.

use std::sync::Once;

use pyo3::prelude::*;

pub(crate) fn with_python<R>(f: impl for<'py> FnOnce(Python<'py>) -> R) -> R {
    static START: Once = Once::new();
    START.call_once(|| {
        crate::interpreter::initialize(&Default::default()).expect("python starts");
    });
    crate::interpreter::attach(f)
}
