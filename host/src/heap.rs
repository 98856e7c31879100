//! Heap memory freed by dropped instances handed back to the system.
//!
//! glibc's allocator keeps what a program frees in its arenas for the next allocation, and
//! under load the host spreads instances' stores, tables and buffers over several arenas. When
//! a load stops and the host drops the instances it no longer keeps warm, hundreds of MiB can
//! stay resident, free but never returned. [`release_freed`] asks glibc to give those pages
//! back (`malloc_trim`); the watchdog calls it after a handler dropped warm instances or
//! reloaded its component, and compiling a component ends with [`trim_now`] (once its compiler
//! is dropped).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Least time between two trims: a trim walks every arena under its lock, and a thousand
/// handlers dropping instances now and then must not keep one running.
const MIN_GAP: Duration = Duration::from_secs(5);

/// Set when memory was freed since the last trim began.
static REQUESTED: AtomicBool = AtomicBool::new(false);
/// Set while a trim runs.
static TRIMMING: AtomicBool = AtomicBool::new(false);

/// Hands the heap's free pages back to the system, on a thread of its own. Calls that arrive
/// while a trim runs, or less than [`MIN_GAP`] after it, are folded into one more trim at the
/// end of the gap, so memory freed meanwhile is returned too.
pub fn release_freed() {
    REQUESTED.store(true, Ordering::Release);
    if TRIMMING.swap(true, Ordering::AcqRel) {
        return;
    }
    // A thread of its own, not the runtime's blocking pool: the runtime waits for those when
    // the host stops, and this one may be sleeping out its gap.
    let trimmer = std::thread::Builder::new()
        .name("jetwasm-trim".into())
        .spawn(|| loop {
            while REQUESTED.swap(false, Ordering::AcqRel) {
                trim_now();
                std::thread::sleep(MIN_GAP);
            }
            TRIMMING.store(false, Ordering::Release);
            // A request that came after the last swap but before the flag fell would be lost:
            // take it over unless another trimmer already did.
            if !REQUESTED.load(Ordering::Acquire) || TRIMMING.swap(true, Ordering::AcqRel) {
                return;
            }
        });
    if trimmer.is_err() {
        // Tried again at the next request.
        TRIMMING.store(false, Ordering::Release);
    }
}

/// Hands the heap's free pages back to the system now, on the calling thread: for code that
/// is blocking anyway.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn trim_now() {
    #[allow(unsafe_code)]
    // SAFETY: `malloc_trim` only walks and madvises glibc's own arenas, under their locks; it
    // takes no pointers from us.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other allocators return memory on their own (or offer no way to ask).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim_now() {}
