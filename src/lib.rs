//! faasd: a fresh container per request, made in-process on raw Linux syscalls.
pub mod runtime;
