//! Shared by the fuzz targets: an allocator that turns any single
//! allocation above [`LIMIT`] into a crash. libFuzzer's `-malloc_limit_mb`
//! needs a sanitizer's allocator hooks, which a `--sanitizer none` build
//! lacks, and `-rss_limit_mb` misses a huge allocation that is never
//! touched; inputs are a few KiB, so anything this large was sized from a
//! length the input claimed rather than bytes it holds.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;

/// 64 MiB.
pub const LIMIT: usize = 64 << 20;

pub struct Limited;

fn check(size: usize) {
    if size > LIMIT {
        // No allocation here: a fixed message, then abort for libFuzzer.
        let _ = std::io::stderr().write_all(b"fuzz: single allocation over 64 MiB\n");
        std::process::abort();
    }
}

unsafe impl GlobalAlloc for Limited {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}
