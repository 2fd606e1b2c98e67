//! io_uring (glommio) registers buffers in locked memory. Raise RLIMIT_MEMLOCK as far as the
//! hard limit allows before any executor starts, and explain failures in words an operator can
//! act on.

/// Raises the soft RLIMIT_MEMLOCK to the hard limit. Returns the resulting soft limit in bytes
/// (`u64::MAX` for unlimited).
pub fn raise_memlock_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_MEMLOCK, &raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
        if limit.rlim_cur == libc::RLIM_INFINITY {
            u64::MAX
        } else {
            limit.rlim_cur
        }
    }
}

/// The message shown when an executor (io_uring) cannot start.
pub fn explain_executor_failure(error: &dyn std::fmt::Display, memlock_bytes: u64) -> String {
    format!(
        "cannot start the io_uring event loop: {error}\n\
         locked-memory limit (RLIMIT_MEMLOCK) is {} bytes; glommio needs several MiB per core.\n\
         Raise it, e.g. `ulimit -l unlimited` (as root) or `LimitMEMLOCK=infinity` in a systemd unit,\n\
         or add `* - memlock unlimited` to /etc/security/limits.conf; io_uring also needs Linux 5.8+.",
        if memlock_bytes == u64::MAX { "unlimited".to_string() } else { memlock_bytes.to_string() }
    )
}
