//! Giving spare memory back to the system once a burst is over.
//!
//! glibc keeps what a thread frees in that thread's arena for the next allocation, and
//! returns to the system only what lies at an arena's top. After a burst (thousands of
//! connections' buffers, page caches) most of it lies in between, and the process stays as
//! large as it was at its busiest. `malloc_trim` hands back every free page of every arena.

/// Returns free heap pages to the system. Costs a walk of the heaps (milliseconds), so it
/// is called once a burst is over, never on a timer.
pub fn give_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only reads and releases the allocator's own free lists; it is
    // thread-safe and takes no pointers from us.
    unsafe {
        libc::malloc_trim(0);
    }
}
