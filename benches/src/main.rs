//! `flowipc-bench`: cross-process latency and throughput of flowipc against raw baselines.

fn main() {
    println!("flowipc-bench: no systems yet");
}
