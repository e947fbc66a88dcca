//! How the process uses glibc's allocator. glibc keeps freed pages for reuse and gives each
//! allocating thread an arena of its own; for a process that buffers an export up to a budget,
//! spills it, and then idles, both make the resident size grow past what the buffers hold. On
//! other platforms these are no-ops.

/// Caps the arenas at two. A sync's decoder, normalizer and encoder threads each kept a copy
/// of the buffers they had passed through, and the resident size grew with the export; two
/// arenas keep it flat at no cost in speed. Call before any other thread exists.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn limit_arenas() {
    // SAFETY: mallopt only changes allocator tuning; the caller runs it before other threads.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Returns freed pages to the system: after a spill, as the decoder's batches and the spill's
/// own gathering and encoding leave holes that later allocations never fill exactly, so free
/// heap creeps up spill after spill (docs/performance.md, "Why the engine is shaped as it is,"
/// has the figure); when a job's
/// rows are all in, as the buffers' vectors are let go; and after a daemon cycle, which is
/// followed by minutes or hours of idling.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn release_freed() {
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn limit_arenas() {}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_freed() {}
