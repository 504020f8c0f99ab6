//! One result row of `flowipc-bench`, as printed in the table and written to the JSON file.

use serde::Serialize;

/// One measured configuration. Figures that do not apply to a kind are `None` (JSON `null`).
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The system measured, e.g. `flowipc-ring`, `raw-futex`, `flowipc-arena`.
    pub system: String,
    /// `busy-poll`, `spin-then-block` or `block`; for allocator rows `1-thread` or `2-threads`.
    pub mode: String,
    /// `cross-core` or `same-core`; for allocator rows `n/a`.
    pub placement: String,
    /// `rtt`, `stream` or `alloc`.
    pub kind: String,
    /// Payload (or object) size in bytes.
    pub size_bytes: u64,
    /// Median round trip (rtt) or ns per alloc+free pair (alloc).
    pub p50_ns: Option<f64>,
    /// 99th percentile.
    pub p99_ns: Option<f64>,
    /// 99.9th percentile.
    pub p999_ns: Option<f64>,
    /// Messages per second (stream).
    pub msgs_per_s: Option<f64>,
    /// Payload gigabytes (1e9 bytes) per second (stream).
    pub gbytes_per_s: Option<f64>,
}
