//! Heap memory with the alignment that the libraries want for packed weights.

use std::alloc::Layout;
use std::ptr::NonNull;

/// A 64-byte aligned heap buffer (what MKL recommends for packed matrices).
pub(super) struct AlignedBuf {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: the buffer is plain memory owned by this value; shared access is read-only.
unsafe impl Send for AlignedBuf {}
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// An uninitialised buffer: the packing routine writes what it later reads. oneMKL asks
    /// for far more than a small weight's packed form needs (about 10 MB for a 288 × 576 slice),
    /// so the pages it never writes must stay untouched, or the server's memory would triple.
    pub(super) fn new(bytes: usize) -> Self {
        let layout = Layout::from_size_align(bytes.max(64), 64).expect("valid layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc(layout) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        // Unit tests fill the buffer with NaN bytes: a library reading bytes its packing never
        // wrote then gives NaN products instead of passing on fresh (zeroed) pages.
        #[cfg(test)]
        // SAFETY: the buffer holds `layout.size()` bytes.
        unsafe {
            std::ptr::write_bytes(ptr.as_ptr(), 0xff, layout.size())
        };
        Self { ptr, layout }
    }

    /// The buffer's size in bytes.
    pub(super) fn len(&self) -> usize {
        self.layout.size()
    }

    /// The start of the buffer (libraries write packed weights through it).
    pub(super) fn as_mut_ptr(&self) -> *mut std::ffi::c_void {
        self.ptr.as_ptr().cast()
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}
