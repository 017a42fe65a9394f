//! Process-level helpers shared by the test binaries (through `tests/common/mod.rs`) and the
//! benchmarks (through `benches/common/mod.rs`, which includes this file by path): the runtime
//! for connection tasks, the process's RSS and heap in use, and the open-file limit. Nothing here
//! knows about nodes or tests, so both kinds of binary can compile it.
//!
//! Each binary uses a different part of it.
#![allow(dead_code)]

use std::sync::OnceLock;

use tokio::runtime::{Handle, Runtime};

/// A multi-thread runtime for connection tasks, shared by the tests (or benchmarks) of a binary
/// and never dropped (dropping a runtime inside another one's task panics).
pub(crate) fn io_runtime() -> Handle {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
    .handle()
    .clone()
}

/// Resident set size of this process, in bytes (`VmRSS` of /proc/self/status).
pub(crate) fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Raises the soft open-file limit to the hard limit (a thousand connections need two
/// thousand descriptors in one process: both ends are here).
pub(crate) fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit get a valid pointer to an rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// `MiB` as bytes, for printing.
pub(crate) fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Bytes the allocator has handed out and not got back (glibc's `mallinfo2`: `uordblks` plus
/// `hblkhd`, the mmapped blocks), or `None` where glibc is not the allocator. Unlike RSS it
/// does not count freed memory the allocator keeps, so it tells live growth from
/// fragmentation.
pub(crate) fn heap_in_use() -> Option<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 takes no arguments and returns a plain struct.
        let info = unsafe { libc::mallinfo2() };
        Some((info.uordblks + info.hblkhd) as u64)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}
