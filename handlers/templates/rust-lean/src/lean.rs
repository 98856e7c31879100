//! What `std` provides to a component, for a `no_std` one: a heap, the canonical ABI's
//! allocator (`cabi_realloc`) and a panic handler. Without `std` the component imports no
//! WASI, only the jetwasm contract: one core module to instantiate per message instead of
//! three, which is what makes a fresh sandbox per message cheap. Keep this file as it is.

use core::alloc::{GlobalAlloc, Layout};
use core::arch::wasm32;
use core::cell::UnsafeCell;
use core::ptr;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::jetwasm::runtime::log::{log, Level};

const PAGE: usize = 64 << 10;

extern "C" {
    /// Where the linker put the end of the stack and static data: the heap starts here.
    static __heap_base: u8;
}

/// The linear memory as dlmalloc's source of pages: first the free space the module starts
/// with (build.rs sizes it), then pages grown on demand. Growing on every instance's first
/// allocation would cost the host two system calls per message.
struct Pages {
    started: UnsafeCell<bool>,
}

// SAFETY: a wasm32 component runs on one thread.
unsafe impl Send for Pages {}

// SAFETY: every region handed out is memory no one else uses: the initial heap once, then
// pages freshly grown.
unsafe impl dlmalloc::Allocator for Pages {
    fn alloc(&self, size: usize) -> (*mut u8, usize, u32) {
        // SAFETY: single-threaded (see `Send`), and `__heap_base` is only taken the address of.
        let (first, base) = unsafe {
            let first = !self.started.get().replace(true);
            (first, ptr::addr_of!(__heap_base) as usize)
        };
        let end = wasm32::memory_size(0) * PAGE;
        let start = if first {
            base.next_multiple_of(16)
        } else {
            end
        };
        let missing = (start + size).saturating_sub(end).div_ceil(PAGE);
        if missing > 0 && wasm32::memory_grow(0, missing) == usize::MAX {
            return (ptr::null_mut(), 0, 0);
        }
        let end = end + missing * PAGE;
        (start as *mut u8, end - start, 0)
    }

    fn remap(&self, _: *mut u8, _: usize, _: usize, _: bool) -> *mut u8 {
        ptr::null_mut()
    }

    fn free_part(&self, _: *mut u8, _: usize, _: usize) -> bool {
        false
    }

    fn free(&self, _: *mut u8, _: usize) -> bool {
        false
    }

    fn can_release_part(&self, _: u32) -> bool {
        false
    }

    fn allocates_zeros(&self) -> bool {
        true
    }

    fn page_size(&self) -> usize {
        PAGE
    }
}

struct Heap(UnsafeCell<dlmalloc::Dlmalloc<Pages>>);

// SAFETY: a wasm32 component runs on one thread.
unsafe impl Sync for Heap {}

// SAFETY: dlmalloc's contract is GlobalAlloc's.
unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        (*self.0.get()).malloc(layout.size(), layout.align())
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        (*self.0.get()).calloc(layout.size(), layout.align())
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        (*self.0.get()).free(ptr, layout.size(), layout.align())
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        (*self.0.get()).realloc(ptr, layout.size(), layout.align(), new_size)
    }
}

#[global_allocator]
static HEAP: Heap = Heap(UnsafeCell::new(dlmalloc::Dlmalloc::new_with_allocator(
    Pages {
        started: UnsafeCell::new(false),
    },
)));

/// The canonical ABI's allocator: where the host writes a call's arguments (the message).
#[no_mangle]
unsafe extern "C" fn cabi_realloc(
    old: *mut u8,
    old_len: usize,
    align: usize,
    new_len: usize,
) -> *mut u8 {
    if new_len == 0 {
        return align as *mut u8;
    }
    let new = if old_len == 0 {
        alloc::alloc::alloc(Layout::from_size_align_unchecked(new_len, align))
    } else {
        alloc::alloc::realloc(
            old,
            Layout::from_size_align_unchecked(old_len, align),
            new_len,
        )
    };
    if new.is_null() {
        wasm32::unreachable()
    }
    new
}

/// A panic is logged through the host's log (std would write it to stderr), then traps: the
/// host handles the message as for any trap (redelivered with backoff, then dead-lettered).
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    static PANICKED: AtomicBool = AtomicBool::new(false);
    // Once only: formatting the line may itself panic (out of memory).
    if !PANICKED.swap(true, Ordering::Relaxed) {
        let line = match info.location() {
            Some(at) => alloc::format!("panicked at {at}: {}", info.message()),
            None => alloc::format!("panicked: {}", info.message()),
        };
        log(Level::Error, &line);
    }
    wasm32::unreachable()
}
