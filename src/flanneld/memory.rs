//! Giving freed heap memory back to the kernel.
//!
//! The daemon's memory has a sharp profile: the initial Node list (pages of several MB of JSON),
//! each reconcile pass (three netlink dumps of up to 3 × 5000 entries) and each `/status`
//! render allocate a lot for milliseconds, while the steady state (slim node cache, desired
//! entries) is a few MB. glibc's allocator keeps freed memory inside its arenas, so without
//! help the resident size stays at the high-water mark of the busiest moment — 3–4× the live
//! heap at 5000 nodes (bench-peers). After those moments we ask glibc to return free pages.

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

/// Caps the number of malloc arenas. glibc creates up to 8 per core for threads that contend;
/// each keeps its own free memory, so a short burst on one worker thread leaves memory parked
/// in an arena other threads never reuse. Two arenas are plenty for a daemon with two runtime
/// workers. Call once, before any thread is spawned. A no-op on other C libraries.
pub fn limit_malloc_arenas(max: i32) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt with M_ARENA_MAX only sets an allocator tunable; it is called before
        // other threads exist.
        unsafe {
            nix::libc::mallopt(nix::libc::M_ARENA_MAX, max);
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = max;
}
