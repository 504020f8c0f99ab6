//! A fork child of a jemalloc pool's owner must not touch the pool: the pool's memory is shared
//! with the parent, and its jemalloc arena and thread caches are the parent's. The child gets
//! `NotOwner` from every call, including on the thread whose cache the fast path would have
//! used, and dropping one of the parent's objects there leaves the object alive in the parent.
#![cfg(feature = "jemalloc")]

use flowipc::arena::{ArenaError, LendPool};

extern "C" {
    fn fork() -> i32;
    fn _exit(status: i32) -> !;
    fn waitpid(pid: i32, status: *mut i32, options: i32) -> i32;
}

/// Runs `f` in a fork child and returns its exit code (the value `f` returned).
fn in_fork_child(f: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child runs only `f`, whose pool calls fail before they take a lock or allocate,
    // and leaves through `_exit`, so it never depends on the state of the parent's other threads.
    let pid = unsafe { fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = f();
        // SAFETY: ends the child at once, without running the parent's destructors or atexit.
        unsafe { _exit(code) }
    }
    let mut status = 0;
    // SAFETY: waits for our own child; `status` is a valid out-pointer.
    let rc = unsafe { waitpid(pid, &mut status, 0) };
    assert_eq!(rc, pid);
    assert_eq!(
        status & 0x7f,
        0,
        "the child was killed by signal {}",
        status & 0x7f
    );
    (status >> 8) & 0xff
}

#[test]
fn a_fork_child_cannot_use_or_free_in_the_parents_pool() {
    let pool = LendPool::create_jemalloc(16 << 20).unwrap();
    // This thread's cache now serves the pool (the fast path's last-used cache).
    let scoped = std::mem::ManuallyDrop::new(pool.alloc_scoped(64).unwrap());
    scoped.write(0, &[7; 64]).unwrap();
    let owned = pool.alloc_bytes(&[9; 5000]).unwrap();
    let before = pool.usage();
    let (scoped_handle, owned_handle) = (scoped.handle(), owned.handle());

    let code = in_fork_child(|| {
        if !matches!(pool.alloc_scoped(64), Err(ArenaError::NotOwner)) {
            return 1;
        }
        if !matches!(pool.alloc(100_000), Err(ArenaError::NotOwner)) {
            return 2;
        }
        if !matches!(pool.alloc_bytes(&[1; 16]), Err(ArenaError::NotOwner)) {
            return 3;
        }
        // SAFETY: this process never drops its own copy of `scoped` (a ManuallyDrop, and the
        // child leaves through `_exit`), so this is the only drop of it here.
        drop(unsafe { std::ptr::read(&*scoped) });
        if !matches!(owned.share(), Err(ArenaError::NotOwner)) {
            return 4;
        }
        0
    });
    assert_eq!(code, 0, "child check {code} failed");

    // Both objects are still alive at their generations in the parent (a read checks the
    // header's state word: allocated, at the handle's generation).
    assert_eq!(pool.usage(), before);
    assert_eq!(scoped.handle(), scoped_handle);
    let mut buf = [0; 64];
    scoped.read(0, &mut buf).unwrap();
    assert_eq!(buf, [7; 64]);
    assert_eq!(owned.handle(), owned_handle);
    assert_eq!(owned.to_vec().unwrap(), vec![9; 5000]);
    drop(std::mem::ManuallyDrop::into_inner(scoped));
    drop(owned);
    assert_eq!(pool.usage().objects, 0);
}
