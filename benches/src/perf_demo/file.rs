//! The "files" of perf_demo and their check: a file of `size` bytes holds byte `i % 256` at offset
//! `i`, travels as [`PART_SIZE`] parts, and each part carries its length and [`part_hash`] so that the
//! client can tell a complete, intact response from anything else (as Flow-IPC's perf_demo does with
//! `dataSizeToVerify` / `dataHashToVerify`).

use std::fmt;

use crate::perf_demo_capnp::{body, get_cache_rsp};

/// Bytes per part (Flow-IPC's perf_demo uses 16 KiB parts too); the last part may be shorter.
pub const PART_SIZE: u64 = 16 * 1024;

/// The number of parts of a file of `size` bytes.
pub fn part_count(size: u64) -> u64 {
    size.div_ceil(PART_SIZE)
}

/// Length of part `k` (`k < part_count(size)`) of a file of `size` bytes.
pub fn part_len(size: u64, k: u64) -> u64 {
    debug_assert!(k < part_count(size));
    (size - k * PART_SIZE).min(PART_SIZE)
}

/// The name the client asks for; the server reads the size back with [`size_of_name`].
pub fn file_name(size: u64) -> String {
    format!("file-{size}")
}

/// The size a [`file_name`] stands for; `None` for any other name.
pub fn size_of_name(name: &str) -> Option<u64> {
    name.strip_prefix("file-")?.parse().ok()
}

/// Writes the file's bytes at `offset..offset + part.len()` into `part`.
pub fn fill(part: &mut [u8], offset: u64) {
    for (j, b) in part.iter_mut().enumerate() {
        // i % 256 is the low byte of i.
        *b = (offset as usize).wrapping_add(j) as u8;
    }
}

/// The hash carried with each part: FxHash's step (`h = (h.rotl(5) ^ word) * K`) over the bytes
/// as little-endian 64-bit words, the last one zero-padded, starting from the length.
///
/// Not cryptographic; it is here to catch a transport that loses, duplicates or damages bytes. Each
/// step is a bijection of the state for a fixed word (rotation, xor, multiplication by an odd
/// constant), so two inputs of the same length that differ in a single word always hash
/// differently. It runs at several GB/s, so checking a 1 GiB response costs a fraction of a second.
pub fn part_hash(bytes: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let step = |h: u64, w: u64| (h.rotate_left(5) ^ w).wrapping_mul(K);
    let mut h = bytes.len() as u64;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        h = step(h, u64::from_le_bytes(w.try_into().expect("chunks of 8")));
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut last = [0u8; 8];
        last[..rest.len()].copy_from_slice(rest);
        h = step(h, u64::from_le_bytes(last));
    }
    h
}

/// Builds the response for a file of `size` bytes into `body`: every part's bytes, length and hash.
/// The server does this once per file and sends the result for every request.
pub fn build_response(body: body::Builder<'_>, size: u64) {
    let n = part_count(size);
    let count = u32::try_from(n).expect("a file of at most 64 TiB");
    let mut parts = body.init_get_cache_rsp().init_file_parts(count);
    for k in 0..n {
        let len = part_len(size, k);
        let mut part = parts.reborrow().get(k as u32);
        let hash = {
            let data = part.reborrow().init_data(len as u32);
            fill(data, k * PART_SIZE);
            part_hash(data)
        };
        part.set_data_size_to_verify(len);
        part.set_data_hash_to_verify(hash);
    }
}

/// Builds the empty response (no parts): the answer to a request to drop the cached file.
pub fn build_empty_response(body: body::Builder<'_>) {
    body.init_get_cache_rsp().init_file_parts(0);
}

/// Why a response failed the check.
#[derive(Debug)]
pub enum VerifyError {
    /// The body is a request, or not readable as a response.
    NotAResponse(String),
    /// Reading the message failed (malformed, or past a limit).
    Capnp(capnp::Error),
    /// The response holds a different number of parts than the file has.
    PartCount {
        /// Parts received.
        got: u64,
        /// Parts of the file.
        want: u64,
    },
    /// A part's data length differs from the length it carries, or from what that part of the
    /// file must hold.
    PartSize {
        /// Which part.
        part: u64,
        /// Bytes of data received.
        got: u64,
        /// The length the part carries.
        claimed: u64,
        /// The length that part of the file has.
        want: u64,
    },
    /// A part's data does not hash to the hash it carries.
    PartHash {
        /// Which part.
        part: u64,
        /// The hash of the data received.
        got: u64,
        /// The hash the part carries.
        claimed: u64,
    },
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerifyError::NotAResponse(what) => write!(f, "not a GetCacheRsp: {what}"),
            VerifyError::Capnp(e) => write!(f, "reading the response failed: {e}"),
            VerifyError::PartCount { got, want } => {
                write!(f, "{got} parts received, the file has {want}")
            }
            VerifyError::PartSize {
                part,
                got,
                claimed,
                want,
            } => write!(
                f,
                "part {part}: {got} bytes of data, the part says {claimed}, the file has {want}"
            ),
            VerifyError::PartHash { part, got, claimed } => write!(
                f,
                "part {part}: the data hashes to {got:#018x}, the part says {claimed:#018x}"
            ),
        }
    }
}

impl std::error::Error for VerifyError {}

impl From<capnp::Error> for VerifyError {
    fn from(e: capnp::Error) -> Self {
        VerifyError::Capnp(e)
    }
}

/// The response's parts, or why `body` is not a response.
pub fn response_parts(
    body: body::Reader<'_>,
) -> Result<capnp::struct_list::Reader<'_, crate::perf_demo_capnp::file_part::Owned>, VerifyError> {
    match body.which() {
        Ok(body::GetCacheRsp(rsp)) => {
            let rsp: get_cache_rsp::Reader<'_> = rsp?;
            Ok(rsp.get_file_parts()?)
        }
        Ok(body::GetCacheReq(_)) => Err(VerifyError::NotAResponse("a GetCacheReq".into())),
        Err(e) => Err(VerifyError::NotAResponse(e.to_string())),
    }
}

/// What the client's timer waits for: the response's root and the first byte of the first part's
/// data (0 for an empty file).
pub fn first_byte(body: body::Reader<'_>) -> Result<u8, VerifyError> {
    let parts = response_parts(body)?;
    if parts.is_empty() {
        return Ok(0);
    }
    Ok(parts.get(0).get_data()?.first().copied().unwrap_or(0))
}

/// Checks a response for a file of `size` bytes: the number of parts, and for every part that its
/// data has the length it carries and the file has there, and hashes to the hash it carries.
pub fn verify(body: body::Reader<'_>, size: u64) -> Result<(), VerifyError> {
    let parts = response_parts(body)?;
    let want = part_count(size);
    if u64::from(parts.len()) != want {
        return Err(VerifyError::PartCount {
            got: parts.len().into(),
            want,
        });
    }
    for (k, part) in parts.iter().enumerate() {
        let k = k as u64;
        let data = part.get_data()?;
        let (got, claimed, want) = (
            data.len() as u64,
            part.get_data_size_to_verify(),
            part_len(size, k),
        );
        if got != claimed || got != want {
            return Err(VerifyError::PartSize {
                part: k,
                got,
                claimed,
                want,
            });
        }
        let (got, claimed) = (part_hash(data), part.get_data_hash_to_verify());
        if got != claimed {
            return Err(VerifyError::PartHash {
                part: k,
                got,
                claimed,
            });
        }
    }
    Ok(())
}

/// Parses a size: bytes, or a number with `K`, `M` or `G` (binary: KiB, MiB, GiB), e.g. `100K`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, ""),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 100K, 1M, 1G or 4096)"))?;
    let shift = match unit
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        _ => return Err(format!("{s:?}: unknown unit {unit:?}; use K, M or G")),
    };
    match n.checked_shl(shift).filter(|v| v >> shift == n) {
        Some(v) if v > 0 => Ok(v),
        Some(_) => Err("a file must have at least one byte".into()),
        None => Err(format!("{s:?} is too large")),
    }
}

/// A size as the table shows it: `100 KiB`, `1 GiB`, or bytes.
pub fn fmt_size(b: u64) -> String {
    match b {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1024 && b % 1024 == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response for `size` bytes, built as the server builds it, in an ordinary heap message.
    fn response(size: u64) -> capnp::message::Builder<capnp::message::HeapAllocator> {
        let mut msg = capnp::message::Builder::new_default();
        build_response(msg.init_root::<body::Builder<'_>>(), size);
        msg
    }

    /// Part `k`'s data, writable (to damage it).
    fn part_data(
        msg: &mut capnp::message::Builder<capnp::message::HeapAllocator>,
        k: u32,
    ) -> &mut [u8] {
        let body::WhichBuilder::GetCacheRsp(rsp) = msg
            .get_root::<body::Builder<'_>>()
            .unwrap()
            .which()
            .unwrap()
        else {
            panic!("not a response")
        };
        rsp.unwrap()
            .get_file_parts()
            .unwrap()
            .get(k)
            .get_data()
            .unwrap()
    }

    fn check(
        msg: &capnp::message::Builder<capnp::message::HeapAllocator>,
        size: u64,
    ) -> Result<(), VerifyError> {
        verify(msg.get_root_as_reader::<body::Reader<'_>>().unwrap(), size)
    }

    #[test]
    fn parts_split_the_file_and_carry_its_bytes() {
        assert_eq!(part_count(1), 1);
        assert_eq!(part_count(PART_SIZE), 1);
        assert_eq!(part_count(PART_SIZE + 1), 2);
        assert_eq!(part_count(100 << 10), 7);
        assert_eq!(part_len(100 << 10, 6), (100 << 10) - 6 * PART_SIZE);
        assert_eq!(part_count(1 << 30), 65_536);

        let size = 2 * PART_SIZE + 100;
        let msg = response(size);
        let root = msg.get_root_as_reader::<body::Reader<'_>>().unwrap();
        let parts = response_parts(root).unwrap();
        assert_eq!(parts.len(), 3);
        // Concatenated, the parts are the file: byte i is i % 256.
        let mut file = Vec::new();
        for part in parts.iter() {
            let data = part.get_data().unwrap();
            assert_eq!(part.get_data_size_to_verify(), data.len() as u64);
            assert_eq!(part.get_data_hash_to_verify(), part_hash(data));
            file.extend_from_slice(data);
        }
        assert_eq!(file.len() as u64, size);
        assert!(file.iter().enumerate().all(|(i, b)| *b == i as u8));
        assert_eq!(first_byte(root).unwrap(), 0);
        check(&msg, size).unwrap();
    }

    #[test]
    fn hash_is_pinned_and_sees_every_byte() {
        // Pinned values: the server and client must agree across builds.
        assert_eq!(part_hash(b""), 0);
        assert_eq!(part_hash(b"abc"), part_hash(b"abc"));
        let data: Vec<u8> = (0..=255u8).cycle().take(16 * 1024 + 3).collect();
        let h = part_hash(&data);
        for i in [0, 7, 8, 4095, data.len() - 1] {
            let mut damaged = data.clone();
            damaged[i] ^= 1;
            assert_ne!(part_hash(&damaged), h, "a flipped bit at {i} went unseen");
        }
        // The length is part of the hash: a trailing zero byte is not padding.
        assert_ne!(part_hash(&[1, 2, 3]), part_hash(&[1, 2, 3, 0]));
    }

    #[test]
    fn a_corrupted_part_fails_the_check() {
        let size = 3 * PART_SIZE;
        let mut msg = response(size);
        check(&msg, size).unwrap();
        part_data(&mut msg, 1)[500] ^= 0x40;
        match check(&msg, size) {
            Err(VerifyError::PartHash { part: 1, .. }) => {}
            other => panic!("a damaged part passed or failed oddly: {other:?}"),
        }
    }

    #[test]
    fn a_wrong_size_or_count_fails_the_check() {
        let size = 3 * PART_SIZE;
        let mut msg = response(size);
        // The client asked for more than came.
        assert!(matches!(
            check(&msg, size + 1),
            Err(VerifyError::PartCount { got: 3, want: 4 })
        ));
        // A part that claims another length.
        {
            let body::WhichBuilder::GetCacheRsp(rsp) = msg
                .get_root::<body::Builder<'_>>()
                .unwrap()
                .which()
                .unwrap()
            else {
                panic!()
            };
            rsp.unwrap()
                .get_file_parts()
                .unwrap()
                .get(2)
                .set_data_size_to_verify(PART_SIZE - 1);
        }
        assert!(matches!(
            check(&msg, size),
            Err(VerifyError::PartSize { part: 2, .. })
        ));
        // A request is not a response.
        let mut req = capnp::message::Builder::new_default();
        req.init_root::<body::Builder<'_>>()
            .init_get_cache_req()
            .set_file_name("file-1");
        assert!(matches!(
            verify(req.get_root_as_reader().unwrap(), 1),
            Err(VerifyError::NotAResponse(_))
        ));
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("100K"), Ok(100 << 10));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("10MiB"), Ok(10 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("0").is_err());
        assert!(parse_size("1T").is_err());
        assert!(parse_size("x").is_err());
        assert_eq!(size_of_name(&file_name(1 << 30)), Some(1 << 30));
        assert_eq!(size_of_name("other"), None);
        assert_eq!(fmt_size(100 << 10), "100 KiB");
        assert_eq!(fmt_size(1 << 30), "1 GiB");
    }
}
