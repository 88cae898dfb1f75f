//! The allocator, and giving spare memory back to the system once a burst is over.
//!
//! The binary allocates with mimalloc (see `main.rs`): under load glibc's malloc spent a
//! tenth of the server's instructions consolidating and unlinking the chunks that request
//! buffers and payloads leave behind. mimalloc is built without transparent huge pages,
//! which would make every arena it touches resident in 2 MiB steps.
//!
//! SQLite still allocates with glibc's malloc, which keeps what a thread frees in that
//! thread's arena and returns to the system only what lies at an arena's top; after a burst
//! (page caches) most of it lies in between. So both are asked to hand back what is free.

/// Returns free heap pages to the system. Costs a walk of the heaps (milliseconds), so it
/// is called once a burst is over, never on a timer.
pub fn give_back() {
    // SAFETY: both only release the allocator's own free memory; they are thread-safe and
    // take no pointers from us.
    unsafe {
        libmimalloc_sys::mi_collect(true);
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        libc::malloc_trim(0);
    }
}
