//! Giving freed heap memory back to the kernel.
//!
//! The daemon's memory has a sharp profile: the initial Node list (pages of several MB of JSON),
//! each reconcile pass (three netlink dumps of up to 3 × 5000 entries) and each `/status`
//! render allocate a lot for milliseconds, while the steady state (slim node cache, desired
//! entries) is a few MB. glibc's allocator keeps freed memory inside its arenas, so without
//! help the resident size stays at the high-water mark of the busiest moment, a multiple of the
//! live heap. After those moments we ask glibc to return free pages.

/// Returns free heap pages of every malloc arena to the kernel (glibc `malloc_trim(0)`, which
/// also releases whole free pages in the middle of the heap). A no-op on other C libraries.
/// Costs on the order of a millisecond; call it after bursts, not in hot loops.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks the allocator's own free lists; it has no
        // preconditions and is thread-safe (it takes each arena's lock).
        unsafe {
            nix::libc::malloc_trim(0);
        }
    }
}

/// Tunes glibc's allocator for this daemon's bursty profile; call once, before any thread is
/// spawned. A no-op on other C libraries.
///
/// - At most two arenas (one per runtime worker): glibc creates up to 8 per core for
///   contending threads, and each parks its own free memory.
/// - Fixed mmap and trim thresholds. By default glibc raises both after the first large block
///   is freed (a multi-MB list page raises the trim threshold to twice its size), after which a
///   secondary arena keeps a free top of that size forever — `malloc_trim` only releases free
///   chunks inside a secondary arena, never its top. Fixed values turn that adjustment off:
///   blocks from 256 KiB up (list pages, dump buffers) get their own mapping and go back to
///   the kernel on free, and a free top above 1 MiB is trimmed.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use nix::libc::{M_ARENA_MAX, M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, mallopt};
        // SAFETY: mallopt only sets allocator tunables; called before other threads exist.
        unsafe {
            mallopt(M_ARENA_MAX, 2);
            mallopt(M_MMAP_THRESHOLD, 256 << 10);
            mallopt(M_TRIM_THRESHOLD, 1 << 20);
        }
    }
}
