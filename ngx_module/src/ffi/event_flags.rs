//! nginx's event flags of Linux builds that are preprocessor macros bindgen cannot see.

/// `NGX_READ_EVENT` (epoll).
pub(crate) const READ_EVENT: u32 = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
/// `NGX_EXCLUSIVE_EVENT` (epoll).
pub(crate) const EXCLUSIVE_EVENT: u32 = libc::EPOLLEXCLUSIVE as u32;
