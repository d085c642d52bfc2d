//! The guest's allocator: free lists of power-of-two blocks from 16 bytes to 2 KiB, cut from
//! 4 KiB slabs of the standard allocator (dlmalloc on wasm32), which keeps every larger block.
//!
//! A call into a component allocates and frees a few dozen small blocks — each string and list
//! the host passes in, the parse of a request's top level, the strings passed back — and
//! dlmalloc spends a hundred or more instructions on each (its bins, its chunk headers, merging
//! free neighbours). Here a block of a size used before is taken from, and given back to, its
//! list's head. A component instance runs one call at a time on one thread (wasm32 here has no
//! threads), so the lists need no lock.
//!
//! Freed blocks stay on their list for the next block of that size: an instance's small blocks
//! never go back to dlmalloc, so its memory is what it used at most at once (as with dlmalloc,
//! whose wasm memory never shrinks either). A block is aligned to its size, so any alignment up
//! to 2 KiB is met by taking the size class of `max(size, align)`.
//!
//! An SDK user who installs an allocator of their own turns this one off with the SDK's
//! `system-allocator` feature.

// An allocator is `unsafe` by its nature; nothing else in the SDK is.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::ptr::null_mut;

/// The smallest block: 16 bytes (it holds the list's next pointer, and `u128`'s alignment).
const MIN_SHIFT: u32 = 4;
/// The largest block kept on a list: 2 KiB.
const MAX_SHIFT: u32 = 11;
const CLASSES: usize = (MAX_SHIFT - MIN_SHIFT + 1) as usize;
/// What a list takes from the standard allocator when it is empty: cut into blocks of its size.
const SLAB: usize = 4096;

/// See the module's documentation.
pub struct Blocks {
    /// Each size class's first free block; each free block holds the next one's address.
    free: UnsafeCell<[*mut u8; CLASSES]>,
}

// SAFETY: a component instance is single-threaded (wasm32 without the threads proposal); the
// lists are only ever touched by the one thread running the instance.
unsafe impl Sync for Blocks {}

impl Blocks {
    pub const fn new() -> Self {
        Self {
            free: UnsafeCell::new([null_mut(); CLASSES]),
        }
    }
}

impl Default for Blocks {
    fn default() -> Self {
        Self::new()
    }
}

/// The size class of a block for `layout`, or `None` when it is larger than the largest.
fn class(layout: &Layout) -> Option<usize> {
    let need = layout.size().max(layout.align()).max(1 << MIN_SHIFT);
    if need > 1 << MAX_SHIFT {
        return None;
    }
    Some((need.next_power_of_two().trailing_zeros() - MIN_SHIFT) as usize)
}

unsafe impl GlobalAlloc for Blocks {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(c) = class(&layout) else {
            // SAFETY: the caller's layout, passed on.
            return unsafe { System.alloc(layout) };
        };
        // SAFETY: single-threaded (see `Sync` above), and no reference to the lists outlives
        // this call.
        let free = unsafe { &mut *self.free.get() };
        let head = free[c];
        if !head.is_null() {
            // SAFETY: a free block of this class holds the next free block's address.
            free[c] = unsafe { head.cast::<*mut u8>().read() };
            return head;
        }
        let size = 1usize << (c as u32 + MIN_SHIFT);
        // SAFETY: a non-zero size and a power-of-two alignment.
        let slab = unsafe { System.alloc(Layout::from_size_align_unchecked(SLAB, 1 << MAX_SHIFT)) };
        if slab.is_null() {
            return slab;
        }
        // The first block is the caller's; the others go on the list. The slab is aligned to
        // the largest block, so each block is aligned to its own size.
        let mut at = SLAB;
        while at > size {
            at -= size;
            // SAFETY: `at + size <= SLAB`: inside the slab, and block-aligned.
            unsafe {
                let block = slab.add(at);
                block.cast::<*mut u8>().write(free[c]);
                free[c] = block;
            }
        }
        slab
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if class(&layout).is_none() {
            // SAFETY: the caller's layout, passed on; memory fresh from `memory.grow` is zero
            // already, which dlmalloc knows and a `memset` after `alloc` would not.
            return unsafe { System.alloc_zeroed(layout) };
        }
        // SAFETY: as in `alloc`; the block is at least `layout.size()` long.
        unsafe {
            let block = self.alloc(layout);
            if !block.is_null() {
                std::ptr::write_bytes(block, 0, layout.size());
            }
            block
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(c) = class(&layout) else {
            // SAFETY: a block `alloc` took from the standard allocator with this layout.
            return unsafe { System.dealloc(ptr, layout) };
        };
        // SAFETY: as in `alloc`; `ptr` is a block of class `c` that the caller no longer uses.
        unsafe {
            let free = &mut *self.free.get();
            ptr.cast::<*mut u8>().write(free[c]);
            free[c] = ptr;
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size`, rounded up to `layout.align()`, fits `isize`.
        let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (class(&layout), class(&new)) {
            // The block already fits.
            (Some(a), Some(b)) if a == b => ptr,
            // SAFETY: both are the standard allocator's.
            (None, None) => unsafe { System.realloc(ptr, layout, new_size) },
            _ => {
                // SAFETY: `new` is a valid layout; the old block is `layout.size()` long and the
                // new one `new_size`; the old one is freed once copied.
                unsafe {
                    let moved = self.alloc(new);
                    if !moved.is_null() {
                        std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                    moved
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sized(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).expect("a valid layout")
    }

    #[test]
    fn sizes_map_to_the_smallest_block_that_holds_them_and_their_alignment() {
        let class_of = |size, align| class(&sized(size, align));
        assert_eq!(class_of(1, 1), Some(0));
        assert_eq!(class_of(16, 8), Some(0));
        assert_eq!(class_of(17, 1), Some(1));
        assert_eq!(class_of(8, 64), Some(2));
        assert_eq!(class_of(2048, 1), Some(CLASSES - 1));
        assert_eq!(class_of(2049, 1), None);
        assert_eq!(class_of(16, 4096), None);
    }

    #[test]
    fn blocks_are_aligned_reused_and_keep_their_contents_when_they_grow() {
        let blocks = Blocks::new();
        unsafe {
            let mut seen = Vec::new();
            for (size, align) in [(1, 1), (24, 8), (100, 4), (64, 64), (2048, 2048), (5000, 8)] {
                let layout = sized(size, align);
                let a = blocks.alloc(layout);
                let b = blocks.alloc(layout);
                assert!(!a.is_null() && !b.is_null() && a != b);
                assert_eq!(a as usize % align, 0);
                assert_eq!(b as usize % align, 0);
                std::ptr::write_bytes(a, 0xa5, size);
                std::ptr::write_bytes(b, 0x5a, size);
                assert_eq!(*a.add(size - 1), 0xa5, "blocks do not overlap");
                blocks.dealloc(b, layout);
                // The block just freed is the next one of its size.
                let c = blocks.alloc(layout);
                if size <= 1 << MAX_SHIFT {
                    assert_eq!(c, b);
                }
                seen.push((a, layout));
                seen.push((c, layout));
            }
            // Growing within a class keeps the block; past it, moves it with its contents.
            let layout = sized(20, 1);
            let p = blocks.alloc(layout);
            for i in 0..20 {
                *p.add(i) = i as u8;
            }
            assert_eq!(blocks.realloc(p, layout, 32), p);
            let grown = blocks.realloc(p, sized(32, 1), 3000);
            assert_ne!(grown, p);
            assert!((0..20).all(|i| *grown.add(i) == i as u8));
            let shrunk = blocks.realloc(grown, sized(3000, 1), 10);
            assert!((0..10).all(|i| *shrunk.add(i) == i as u8));
            blocks.dealloc(shrunk, sized(10, 1));
            for (p, layout) in seen {
                blocks.dealloc(p, layout);
            }
            // A zeroed block is zeroed even when it is one given back dirty.
            let layout = sized(48, 8);
            let dirty = blocks.alloc(layout);
            std::ptr::write_bytes(dirty, 0xff, 48);
            blocks.dealloc(dirty, layout);
            let zeroed = blocks.alloc_zeroed(layout);
            assert_eq!(zeroed, dirty);
            assert!((0..48).all(|i| *zeroed.add(i) == 0));
            blocks.dealloc(zeroed, layout);
        }
    }
}
