//! The heap allocator of copy-mode messages: capnp's growth, with first segments recycled.
//!
//! `capnp::message::HeapAllocator` zeroes every segment it allocates (capnp's `Allocator`
//! contract: segments come zeroed), so each `create_msg` paid for zeroing an 8 KiB first segment
//! however small the message, twice per request/response round trip. [`RecyclingHeap`] keeps up
//! to [`SPARE`] first segments per thread: when a message is dropped, capnp reports how many
//! words of each segment were used, only those are zeroed again, and the segment waits in the
//! thread's spare list for the next message. A 64-byte message then costs zeroing 64 bytes, not
//! 8 KiB.
//!
//! The same idea as capnp's `ScratchSpaceHeapAllocator` (which zeroes the used words of a
//! caller's scratch buffer on drop), made `'static` and `Send` so that a `MsgOut` can live
//! anywhere: the spare list is per thread, and a segment dropped on another thread than the one
//! that allocated it goes to that thread's list.

#![allow(unsafe_code)]

use std::cell::RefCell;
use std::ptr::NonNull;

use capnp::message::Allocator;
use capnp::Word;

/// Words of a first segment: capnp's `SUGGESTED_FIRST_SEGMENT_WORDS`, so messages split into
/// segments as they did with `HeapAllocator`.
pub(crate) const FIRST_SEGMENT_WORDS: u32 = 1024;

/// First segments kept per thread (32 KiB).
pub(crate) const SPARE: usize = 4;

/// Largest segment the growth reaches, as in capnp's heap allocator: 2^29 words (4 GiB).
const MAX_SEGMENT_WORDS: u32 = 1 << 29;

thread_local! {
    /// Zeroed first segments, `FIRST_SEGMENT_WORDS` words each.
    static SPARES: RefCell<Vec<Box<[Word]>>> = const { RefCell::new(Vec::new()) };
}

/// A `capnp::message::Allocator` over the heap that grows like capnp's `GrowHeuristically` and
/// recycles first segments (see the module docs).
#[derive(Debug)]
pub(crate) struct RecyclingHeap {
    next_words: u32,
}

impl RecyclingHeap {
    /// Segments of at least `first_words` words, growing from there.
    pub(crate) fn new(first_words: u32) -> Self {
        RecyclingHeap {
            next_words: first_words.max(1),
        }
    }
}

impl Default for RecyclingHeap {
    fn default() -> Self {
        RecyclingHeap::new(FIRST_SEGMENT_WORDS)
    }
}

fn zeroed(words: u32) -> Box<[Word]> {
    Word::allocate_zeroed_vec(words as usize).into_boxed_slice()
}

// SAFETY: `allocate_segment` returns `words * 8` zeroed bytes, 8-byte aligned (a `[Word]`), owned
// by the returned pointer until capnp gives it back to `deallocate_segment` with the same size,
// which turns it back into the `Box` it came from. A recycled segment is all zero: its used words
// were zeroed when it came back, and capnp never writes past the words it reports used.
unsafe impl Allocator for RecyclingHeap {
    fn allocate_segment(&mut self, minimum_size: u32) -> (NonNull<u8>, u32) {
        let words = minimum_size
            .max(self.next_words)
            .min(MAX_SEGMENT_WORDS.max(minimum_size));
        self.next_words = self.next_words.saturating_add(words).min(MAX_SEGMENT_WORDS);
        let seg = if words == FIRST_SEGMENT_WORDS {
            SPARES
                .try_with(|s| s.borrow_mut().pop())
                .ok()
                .flatten()
                .unwrap_or_else(|| zeroed(words))
        } else {
            zeroed(words)
        };
        let ptr = Box::into_raw(seg).cast::<u8>();
        // A `Box` pointer is never null.
        (NonNull::new(ptr).unwrap_or(NonNull::dangling()), words)
    }

    unsafe fn deallocate_segment(&mut self, ptr: NonNull<u8>, word_size: u32, words_used: u32) {
        // SAFETY: `ptr` and `word_size` are what `allocate_segment` returned (capnp's contract),
        // so this is the boxed slice it leaked.
        let mut seg: Box<[Word]> = unsafe {
            Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                ptr.as_ptr().cast::<Word>(),
                word_size as usize,
            ))
        };
        if word_size != FIRST_SEGMENT_WORDS {
            return;
        }
        let used = (words_used as usize).min(seg.len());
        Word::words_to_bytes_mut(&mut seg[..used]).fill(0);
        // Outside a thread's life (its locals being torn down) the segment is simply freed.
        let _ = SPARES.try_with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < SPARE {
                s.push(seg);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capnp::message::Builder;

    fn spares() -> usize {
        SPARES.with(|s| s.borrow().len())
    }

    #[test]
    fn first_segments_come_back_zeroed_and_are_reused() {
        SPARES.with(|s| s.borrow_mut().clear());
        let mut b = Builder::new(RecyclingHeap::default());
        {
            let mut root = b.init_root::<capnp::any_pointer::Builder<'_>>();
            let data = root.reborrow().initn_as::<capnp::data::Builder<'_>>(100);
            data.fill(0xab);
        }
        let first = b.get_segments_for_output()[0].as_ptr();
        drop(b);
        assert_eq!(spares(), 1, "the first segment is kept");
        let mut b = Builder::new(RecyclingHeap::default());
        b.init_root::<capnp::any_pointer::Builder<'_>>();
        assert_eq!(
            b.get_segments_for_output()[0].as_ptr(),
            first,
            "and handed to the next message"
        );
        drop(b);
        // Every byte of a reused segment is zero again (capnp relies on it).
        let mut alloc = RecyclingHeap::default();
        let (ptr, words) = alloc.allocate_segment(1);
        assert_eq!(words, FIRST_SEGMENT_WORDS);
        // SAFETY: `ptr` is `words * 8` bytes this test owns until the deallocation below.
        let bytes = unsafe { std::slice::from_raw_parts(ptr.as_ptr(), words as usize * 8) };
        assert!(
            bytes.iter().all(|&b| b == 0),
            "a recycled segment is zeroed"
        );
        // SAFETY: as allocated above; nothing was written.
        unsafe { alloc.deallocate_segment(ptr, words, 0) };
    }

    /// Written straight through the allocator, so that nothing of capnp's (a builder clearing the
    /// old root when a new one is set) zeroes the words before they come back: only
    /// `deallocate_segment` can.
    #[test]
    fn used_words_are_zeroed_when_a_segment_comes_back() {
        SPARES.with(|s| s.borrow_mut().clear());
        let mut alloc = RecyclingHeap::default();
        let (ptr, words) = alloc.allocate_segment(1);
        assert_eq!(words, FIRST_SEGMENT_WORDS);
        let used = 300u32;
        // SAFETY: `ptr` is `words * 8` bytes this test owns until the deallocation below.
        unsafe { std::ptr::write_bytes(ptr.as_ptr(), 0xcd, used as usize * 8) };
        // SAFETY: as allocated above; `used` words were written.
        unsafe { alloc.deallocate_segment(ptr, words, used) };
        assert_eq!(spares(), 1);
        let mut alloc = RecyclingHeap::default();
        let (again, words) = alloc.allocate_segment(1);
        assert_eq!(again, ptr, "the same segment is handed out again");
        // SAFETY: `again` is `words * 8` bytes this test owns until the deallocation below.
        let bytes = unsafe { std::slice::from_raw_parts(again.as_ptr(), words as usize * 8) };
        assert!(
            bytes.iter().all(|&b| b == 0),
            "the words written before the segment came back are zero again"
        );
        // SAFETY: as allocated above; nothing was written.
        unsafe { alloc.deallocate_segment(again, words, 0) };
    }

    #[test]
    fn larger_segments_and_a_full_spare_list_are_freed() {
        SPARES.with(|s| s.borrow_mut().clear());
        let mut builders: Vec<_> = (0..SPARE + 2)
            .map(|_| {
                let mut b = Builder::new(RecyclingHeap::default());
                b.init_root::<capnp::any_pointer::Builder<'_>>()
                    .initn_as::<capnp::data::Builder<'_>>(20_000); // a second, larger segment
                b
            })
            .collect();
        assert!(builders[0].get_segments_for_output().len() >= 2);
        builders.clear();
        assert_eq!(spares(), SPARE, "at most SPARE kept");
    }
}
