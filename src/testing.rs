//! Unit-test support: one interpreter for the whole test binary.

use std::sync::Once;

use pyo3::prelude::*;

pub(crate) fn with_python<R>(f: impl for<'py> FnOnce(Python<'py>) -> R) -> R {
    static START: Once = Once::new();
    START.call_once(|| {
        // Python's main thread is the one that starts it, and it must outlive every test as
        // nginx's does: once a test thread that started it ends, its ident is reused by a later
        // thread, which `threading` then takes for the main thread.
        let (started, wait) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let result = crate::interpreter::initialize(&Default::default());
            started.send(result).unwrap();
            loop {
                std::thread::park();
            }
        });
        wait.recv().unwrap().expect("python starts");
    });
    crate::interpreter::attach(f)
}
