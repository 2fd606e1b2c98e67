//! An idle reactor gives its freed memory back by collecting its own mimalloc heap
//! (`kahuna::server::allocator`). This test runs on mimalloc, as the `kahuna` binary does, and
//! checks that the call returns the pages of a freed burst to the operating system: the
//! resident size falls back, instead of staying at the burst's peak.

use kahuna::server::allocator::return_this_threads_free_memory;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// This process's resident size in KiB.
fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

#[test]
fn collecting_a_threads_heap_returns_a_freed_burst_to_the_os() {
    // One thread, so no other thread's heap or allocation interferes with the measurement.
    std::thread::spawn(|| {
        const BURST_KIB: u64 = 128 << 10;
        let before = resident_kib();
        // Many small blocks, like the groups' caches and tables a reactor frees at idle.
        let blocks: Vec<Box<[u8]>> = (0..BURST_KIB)
            .map(|index| vec![index as u8; 1024].into_boxed_slice())
            .collect();
        let peak = resident_kib();
        assert!(
            peak >= before + BURST_KIB / 2,
            "the burst is resident: {before} -> {peak} KiB"
        );
        drop(blocks);
        return_this_threads_free_memory();
        let after = resident_kib();
        assert!(
            after <= before + BURST_KIB / 4,
            "freed and collected, yet resident: {before} -> {peak} -> {after} KiB"
        );
    })
    .join()
    .unwrap();
}
