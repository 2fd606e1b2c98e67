//! Owns how a node gives freed memory back to the operating system. Two allocators live in
//! one `kahuna` process: Rust's allocations go to mimalloc (the binary's global allocator,
//! `src/main.rs`), RocksDB's C++ allocations to glibc's malloc. Neither returns freed memory
//! on its own soon enough for an idle node to shrink back after a burst, so an idle core asks
//! both (`core::release_idle_buffers`).
//!
//! Why mimalloc for Rust's side (measured on the 2-core VM, 3 nodes, puts of 256 B, fresh
//! cluster, 8 s pairs against glibc): 64 clients +2/+7/+9% puts/s with p99 8.0-8.9 against
//! 8.5-9.0 ms; 256 clients 18,296/17,391, 19,148/17,942, 18,780/16,168 puts/s; one client no
//! change. Built without transparent huge pages (`no_thp`): with them each node held 45-49
//! MiB of `AnonHugePages`, and the first touch of each 2 MiB page, a long fault in a VM, put
//! p99 at 64 clients at 13.0-14.1 ms.
//!
//! mimalloc keeps freed pages per thread, and a thread's pages are collected by that thread:
//! the reactor, which holds the groups' in-memory state, must collect its own heap; the
//! blocking-pool thread that ran the idle release collects its own and trims glibc's arenas.

/// Returns the calling thread's free mimalloc pages to the operating system. Walks only this
/// thread's heap: cheap enough for a reactor that has been idle for seconds, not for a busy
/// one.
pub fn return_this_threads_free_memory() {
    // SAFETY: mi_collect takes no pointers; it frees only pages with no live block.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

/// Returns glibc's free pages (RocksDB's memtables just released, its buffers) and the calling
/// thread's free mimalloc pages to the operating system. Run it off the reactor: the trim walks
/// and locks every glibc arena of the process. One caller at a time; a concurrent call returns
/// at once.
pub fn return_free_memory() {
    static TRIMMING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if TRIMMING.swap(true, std::sync::atomic::Ordering::Acquire) {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes its locks.
    unsafe {
        libc::malloc_trim(0);
    }
    return_this_threads_free_memory();
    TRIMMING.store(false, std::sync::atomic::Ordering::Release);
}
