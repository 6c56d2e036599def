//! Bindings to Apache httpd 2.4 and APR, generated at build time from the installed headers.
//! Generated code: the crate's unsafe-code lints are for the code written here, not bindgen's.
#![allow(
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks,
    non_upper_case_globals,
    non_camel_case_types,
    non_snake_case,
    dead_code,
    unnecessary_transmutes,
    clippy::all
)]

include!(concat!(env!("OUT_DIR"), "/bindings.rs"));
