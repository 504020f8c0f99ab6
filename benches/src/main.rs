//! `flowipc-bench`: cross-process latency and throughput of flowipc against raw baselines.

mod report;

fn main() {
    println!("flowipc-bench: no systems yet");
}
