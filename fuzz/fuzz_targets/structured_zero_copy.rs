//! Hostile zero-copy frames: forged segment tables (out-of-range offsets and lengths, stale
//! generations, other pools, overlapping or misaligned segments, too many or too few segments,
//! raw bytes) naming blocks of the sender's lend pool, whose contents the target also forges
//! (capnp pointers inside shared segments). The receiver decodes them as a zero-copy channel's
//! reader does and walks every message it accepts in full (`target_size`).
//!
//! Checked: nothing panics or hangs; a table whose every handle is a valid lent block, aligned,
//! distinct and within 1..=512 is accepted (its walk may still fail: the content is forged);
//! at the end, with every message dropped and the receiver's lends reclaimed, the sender's pool
//! is empty (nothing leaked, nothing released twice into a negative count).
#![no_main]

use arbitrary::Arbitrary;
use flowipc::arena::ArenaHandle;
use flowipc::structured::fuzzing::FuzzZeroCopy;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Forge {
    /// The block's handle as lent (len rounded down to whole words).
    Valid,
    Offset(i32),
    Len(u32),
    Generation(u32),
    OtherPool(u64),
    Reserved(u32),
    Raw([u8; 32]),
}

#[derive(Arbitrary, Debug)]
struct Entry {
    block: u8,
    forge: Forge,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// The sender writes forged words into a block.
    Write { block: u8, at: u16, words: Vec<u64> },
    /// The sender lends a block (as a send does).
    Lend { block: u8 },
    /// A frame with this table; `count` overrides the count word when set.
    Table {
        entries: Vec<Entry>,
        count: Option<u32>,
        reserved: u32,
        keep: bool,
    },
    /// Raw table bytes.
    Raw { bytes: Vec<u8>, keep: bool },
}

#[derive(Arbitrary, Debug)]
struct Input {
    sizes: [u16; 4],
    ops: Vec<Op>,
}

fuzz_target!(|input: Input| {
    let sizes: Vec<usize> = input
        .sizes
        .iter()
        .map(|&s| (s as usize % 8192) * 8 + 8)
        .collect();
    let mut zc = FuzzZeroCopy::new(&sizes);
    let mut lent = [0u32; 4];
    for op in input.ops.into_iter().take(64) {
        match op {
            Op::Write { block, at, words } => {
                let bytes: Vec<u8> = words
                    .iter()
                    .take(512)
                    .flat_map(|w| w.to_le_bytes())
                    .collect();
                zc.write(block as usize, at as usize * 8, &bytes);
            }
            Op::Lend { block } => {
                let i = block as usize % zc.blocks();
                zc.lend(i);
                lent[i] += 1;
            }
            Op::Table {
                entries,
                count,
                reserved,
                keep,
            } => {
                let mut all_valid = reserved == 0 && count.is_none() && !entries.is_empty();
                let mut seen = [false; 4];
                let mut table = Vec::new();
                let n = count.unwrap_or(entries.len() as u32);
                table.extend_from_slice(&n.to_le_bytes());
                table.extend_from_slice(&reserved.to_le_bytes());
                for e in entries.iter().take(520) {
                    let i = e.block as usize % zc.blocks();
                    let h = zc.handle(i);
                    let h = ArenaHandle {
                        len: h.len / 8 * 8,
                        ..h
                    };
                    let forged = match e.forge {
                        Forge::Valid => {
                            all_valid &= !seen[i] && lent[i] > 0;
                            seen[i] = true;
                            h.to_bytes()
                        }
                        Forge::Offset(d) => {
                            all_valid = false;
                            ArenaHandle {
                                offset: h.offset.wrapping_add(d as i64 as u64),
                                ..h
                            }
                            .to_bytes()
                        }
                        Forge::Len(l) => {
                            all_valid = false;
                            ArenaHandle { len: l as u64, ..h }.to_bytes()
                        }
                        Forge::Generation(g) => {
                            all_valid = false;
                            ArenaHandle {
                                generation: h.generation.wrapping_add(g),
                                ..h
                            }
                            .to_bytes()
                        }
                        Forge::OtherPool(p) => {
                            all_valid = false;
                            ArenaHandle {
                                pool_id: h.pool_id ^ p,
                                ..h
                            }
                            .to_bytes()
                        }
                        Forge::Reserved(r) => {
                            all_valid = false;
                            ArenaHandle { reserved: r, ..h }.to_bytes()
                        }
                        Forge::Raw(b) => {
                            all_valid = false;
                            b
                        }
                    };
                    table.extend_from_slice(&forged);
                }
                let entries_n = entries.len().min(520);
                all_valid &= entries_n <= 512;
                let got = zc.feed(&table, keep);
                if all_valid {
                    // Accepted as a table: the walk of forged content may fail, but never for
                    // the table's sake.
                    if let Err(e) = &got {
                        assert!(
                            !e.contains("segment table") && !e.contains("zero-copy segment"),
                            "a valid table was refused: {e}"
                        );
                    }
                }
                // The receiver gave every handle back (now or when the kept message drops):
                // what the sender still records for it is released at the end.
                for (i, s) in seen.iter().enumerate() {
                    if *s && lent[i] > 0 {
                        lent[i] -= 1;
                    }
                }
            }
            Op::Raw { bytes, keep } => {
                let _ = zc.feed(&bytes, keep);
            }
        }
    }
    let usage = zc.finish();
    assert_eq!(usage.objects, 0, "the sender's pool leaked: {usage:?}");
});
