//! Seals hold against a peer: a sealed memfd cannot be resized, and a read-only mapping cannot be
//! upgraded to writable (through a read-only descriptor, or after `F_SEAL_FUTURE_WRITE`).

use std::os::fd::AsFd;
use std::ptr;

use flowipc_sys::memfd::{self, SealFlags};
use flowipc_sys::mmap::{Access, Mapping};
use flowipc_sys::Errno;

const LEN: usize = 8192;

fn write_bytes(map: &Mapping, offset: usize, bytes: &[u8]) {
    assert!(offset + bytes.len() <= map.len());
    let p = map.as_mut_ptr().expect("writable mapping");
    // SAFETY: the range is inside the live mapping (checked above); only this thread touches it.
    unsafe { ptr::copy_nonoverlapping(bytes.as_ptr(), p.add(offset), bytes.len()) };
}

fn read_bytes(map: &Mapping, offset: usize, len: usize) -> Vec<u8> {
    assert!(offset + len <= map.len());
    let mut out = vec![0u8; len];
    // SAFETY: the range is inside the live mapping (checked above); only this thread touches it.
    unsafe { ptr::copy_nonoverlapping(map.as_ptr().add(offset), out.as_mut_ptr(), len) };
    out
}

#[test]
fn sealed_memfd_cannot_be_resized() {
    let fd = memfd::create_sealed(c"seals-test", LEN as u64).unwrap();
    let seals = memfd::get_seals(fd.as_fd()).unwrap();
    assert!(
        seals.contains(SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL),
        "{seals:?}"
    );
    assert_eq!(memfd::size(fd.as_fd()).unwrap(), LEN as u64);

    assert_eq!(memfd::set_size(fd.as_fd(), 0), Err(Errno::PERM));
    assert_eq!(
        memfd::set_size(fd.as_fd(), (LEN / 2) as u64),
        Err(Errno::PERM)
    );
    assert_eq!(
        memfd::set_size(fd.as_fd(), (LEN * 2) as u64),
        Err(Errno::PERM)
    );
    // Same size is not a change, so the kernel allows it.
    assert_eq!(memfd::set_size(fd.as_fd(), LEN as u64), Ok(()));
    // F_SEAL_SEAL: no more seals.
    assert_eq!(
        memfd::add_seals(fd.as_fd(), SealFlags::WRITE),
        Err(Errno::PERM)
    );
    assert_eq!(memfd::size(fd.as_fd()).unwrap(), LEN as u64);
    // A duplicate (as a peer would receive) is bound by the same seals.
    let dup = flowipc_sys::fd::dup_cloexec(fd.as_fd()).unwrap();
    assert_eq!(memfd::set_size(dup.as_fd(), 0), Err(Errno::PERM));
}

#[test]
fn unsealed_memfd_can_be_resized() {
    // Control for the test above: without seals the same calls succeed.
    let fd = memfd::memfd_create(c"unsealed").unwrap();
    memfd::set_size(fd.as_fd(), LEN as u64).unwrap();
    memfd::set_size(fd.as_fd(), 0).unwrap();
    assert_eq!(memfd::size(fd.as_fd()).unwrap(), 0);
    assert!(!memfd::get_seals(fd.as_fd())
        .unwrap()
        .contains(SealFlags::SHRINK));
}

#[test]
fn read_only_descriptor_mapping_cannot_be_upgraded() {
    let fd = memfd::create_sealed(c"ro-reopen", LEN as u64).unwrap();
    let writer = Mapping::map(fd.as_fd(), 0, LEN, Access::ReadWrite).unwrap();
    let ro = memfd::reopen_read_only(fd.as_fd()).unwrap();
    assert!(flowipc_sys::fd::is_cloexec(ro.as_fd()).unwrap());

    // Cannot map it writable at all.
    assert_eq!(
        Mapping::map(ro.as_fd(), 0, LEN, Access::ReadWrite).err(),
        Some(Errno::ACCESS)
    );
    let reader = Mapping::map(ro.as_fd(), 0, LEN, Access::ReadOnly).unwrap();
    assert_eq!(reader.access(), Access::ReadOnly);
    assert!(reader.as_mut_ptr().is_none());
    // Nor upgrade the read-only mapping.
    assert_eq!(reader.protect(Access::ReadWrite), Err(Errno::ACCESS));
    assert_eq!(reader.access(), Access::ReadOnly);
    assert!(reader.as_mut_ptr().is_none());

    // It still sees the writer's data.
    write_bytes(&writer, 100, b"written by the owner");
    assert_eq!(read_bytes(&reader, 100, 20), b"written by the owner");
    // And cannot resize: O_RDONLY descriptors cannot ftruncate.
    assert!(memfd::set_size(ro.as_fd(), 0).is_err());
}

#[test]
fn read_write_mapping_can_be_downgraded_and_restored() {
    // Control: with a read-write descriptor the same upgrade succeeds, so the failure above is
    // due to the descriptor, not to `protect`.
    let fd = memfd::create_sealed(c"rw-protect", LEN as u64).unwrap();
    let map = Mapping::map(fd.as_fd(), 0, LEN, Access::ReadWrite).unwrap();
    map.protect(Access::ReadOnly).unwrap();
    assert!(map.as_mut_ptr().is_none());
    map.protect(Access::ReadWrite).unwrap();
    assert_eq!(map.access(), Access::ReadWrite);
    write_bytes(&map, 0, b"ok");
    assert_eq!(read_bytes(&map, 0, 2), b"ok");
}

#[test]
fn future_write_seal_blocks_new_writable_mappings_and_upgrades() {
    let fd = memfd::memfd_create(c"future-write").unwrap();
    memfd::set_size(fd.as_fd(), LEN as u64).unwrap();
    // The owner maps writable before sealing; that mapping keeps working.
    let owner = Mapping::map(fd.as_fd(), 0, LEN, Access::ReadWrite).unwrap();
    memfd::add_seals(
        fd.as_fd(),
        SealFlags::FUTURE_WRITE | SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL,
    )
    .unwrap();
    assert!(memfd::get_seals(fd.as_fd())
        .unwrap()
        .contains(SealFlags::FUTURE_WRITE));

    // Even through the read-write descriptor, no new writable mapping...
    assert_eq!(
        Mapping::map(fd.as_fd(), 0, LEN, Access::ReadWrite).err(),
        Some(Errno::PERM)
    );
    // ...and a read-only one cannot be upgraded.
    let reader = Mapping::map(fd.as_fd(), 0, LEN, Access::ReadOnly).unwrap();
    assert_eq!(reader.protect(Access::ReadWrite), Err(Errno::ACCESS));

    write_bytes(&owner, 8, b"still writable");
    assert_eq!(read_bytes(&reader, 8, 14), b"still writable");
}

#[test]
fn mapping_rejects_empty_and_unaligned() {
    let fd = memfd::create_sealed(c"map-args", LEN as u64).unwrap();
    assert_eq!(
        Mapping::map(fd.as_fd(), 0, 0, Access::ReadOnly).err(),
        Some(Errno::INVAL)
    );
    assert_eq!(
        Mapping::map(fd.as_fd(), 1, 16, Access::ReadOnly).err(),
        Some(Errno::INVAL)
    );
    let m = Mapping::map(fd.as_fd(), 4096, 4096, Access::ReadOnly).unwrap();
    assert_eq!(m.len(), 4096);
    assert!(!m.is_empty());
}

#[test]
fn mapping_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Mapping>();
    // And it can really be used from another thread.
    let fd = memfd::create_sealed(c"send", 4096).unwrap();
    let map = Mapping::map(fd.as_fd(), 0, 4096, Access::ReadWrite).unwrap();
    let map = std::thread::spawn(move || {
        write_bytes(&map, 0, b"from a thread");
        map
    })
    .join()
    .unwrap();
    assert_eq!(read_bytes(&map, 0, 13), b"from a thread");
}
