//! What both stacks' measurements share: the I/O runtime, the measurement window, the process's
//! RSS and its open-file limit.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::runtime::{Handle, Runtime};

/// Worker threads of the multi-thread runtime both stacks' connections run on (the machine has
/// two cores).
pub(crate) const IO_WORKERS: usize = 2;

/// The multi-thread tokio runtime of this process: tm2-p2p's connection tasks (through
/// `SwitchBuilder::io_runtime` / `PeerConn::start`) and libp2p's swarms and connection tasks
/// run on it. Never dropped: dropping a runtime from inside another one's context panics.
pub(crate) fn io_runtime() -> Handle {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(IO_WORKERS)
            .enable_all()
            .build()
            .expect("cannot build the tokio runtime")
    })
    .handle()
    .clone()
}

/// Timing of one measurement: warm up, then count during a window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    /// Run this long before counting (connections settle, windows and buffers grow).
    pub(crate) warmup: Duration,
    /// Count this long.
    pub(crate) duration: Duration,
}

impl Window {
    /// Waits out the warm-up, then returns how much `counter` grew during the window, per
    /// second and per second of CPU time this process used meanwhile (all threads, user and
    /// system). Runs on whatever runtime calls it (only sleeps and atomic loads).
    pub(crate) async fn rate(&self, counter: &AtomicU64) -> Figure {
        tokio::time::sleep(self.warmup).await;
        let (start, cpu_start) = (Instant::now(), cpu_time());
        let before = counter.load(Ordering::Acquire);
        tokio::time::sleep(self.duration).await;
        let after = counter.load(Ordering::Acquire);
        let (end, cpu_end) = (Instant::now(), cpu_time());
        let grew = (after - before) as f64;
        Figure {
            value: grew / (end - start).as_secs_f64(),
            per_cpu_second: Some(grew / (cpu_end - cpu_start).as_secs_f64().max(1e-9)),
        }
    }
}

/// What one measurement of one stack found.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Figure {
    /// The measured quantity: bytes, messages or connections per second, or bytes per
    /// connection end.
    pub(crate) value: f64,
    /// For rates, the same count per second of CPU time the process used: a figure a busy
    /// shared machine disturbs less than a wall-clock rate.
    pub(crate) per_cpu_second: Option<f64>,
}

impl Figure {
    /// A figure without a CPU-time counterpart (memory).
    pub(crate) fn plain(value: f64) -> Self {
        Self {
            value,
            per_cpu_second: None,
        }
    }
}

/// CPU time used so far by every thread of this process, user and system.
fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the rusage it is given a valid pointer to.
    let usage = unsafe {
        if libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) != 0 {
            return Duration::ZERO;
        }
        usage.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Counters a measurement's tasks share with its driver.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// What is measured: bytes, messages or connections, depending on the measurement.
    pub(crate) count: AtomicU64,
    /// Failures (a dial or upgrade that did not complete); reported on stderr.
    pub(crate) failures: AtomicU64,
    /// Set by the driver when the window is over: loops end at their next turn.
    pub(crate) stop: AtomicBool,
}

impl Tally {
    /// Whether the driver asked the loops to end.
    pub(crate) fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Adds `n` to the measured count.
    pub(crate) fn add(&self, n: u64) {
        self.count.fetch_add(n, Ordering::AcqRel);
    }

    /// Counts one failure.
    pub(crate) fn fail(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }
}

/// Resident set size of this process, in bytes (`VmRSS` of /proc/self/status).
pub(crate) fn rss() -> u64 {
    let status =
        std::fs::read_to_string("/proc/self/status").expect("cannot read /proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("no VmRSS line in /proc/self/status");
    kib * 1024
}

/// Raises the soft open-file limit to the hard limit (500 connections with both ends in this
/// process need over 1,000 descriptors).
pub(crate) fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit are given a valid pointer to an rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Waits until `counter` reaches `target`, checking every millisecond, for at most `limit`.
/// Returns whether it did.
pub(crate) async fn wait_count(counter: &AtomicU64, target: u64, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while counter.load(Ordering::Acquire) < target {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    true
}

/// Live heap bytes, counted by a wrapper around the system allocator (feature `heap`, off by
/// default: it adds two atomic operations per allocation to both stacks). The memory
/// measurement prints heap growth next to RSS growth when it is on.
#[cfg(feature = "heap")]
pub(crate) mod heap {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicI64, Ordering};

    static LIVE: AtomicI64 = AtomicI64::new(0);

    /// The counting allocator.
    pub(crate) struct Counting;

    // SAFETY: every call is forwarded to the system allocator unchanged.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
            // SAFETY: forwarded with the caller's layout.
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
            // SAFETY: forwarded with the caller's pointer and layout.
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
            // SAFETY: forwarded with the caller's layout.
            unsafe { System.alloc_zeroed(layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            LIVE.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
            // SAFETY: forwarded with the caller's pointer, layout and size.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    /// Heap bytes allocated and not yet freed.
    pub(crate) fn live() -> i64 {
        LIVE.load(Ordering::Relaxed)
    }
}

/// Live heap bytes when the `heap` feature counts them.
pub(crate) fn heap_live() -> Option<i64> {
    #[cfg(feature = "heap")]
    return Some(heap::live());
    #[cfg(not(feature = "heap"))]
    None
}

/// Prints the heap growth per connection end between `before` and now, when it is counted.
pub(crate) fn report_heap(stack: &str, before: Option<i64>, ends: usize) {
    if let (Some(before), Some(after)) = (before, heap_live()) {
        eprintln!(
            "{stack}: heap growth per connection end {:.1} KiB",
            (after - before) as f64 / ends as f64 / 1024.0
        );
    }
}
