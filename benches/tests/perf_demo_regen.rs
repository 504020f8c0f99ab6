//! The generator of the checked-in Rust for `benches/schema/perf_demo.capnp` (run by
//! `benches/schema/regen.sh`, ignored otherwise: it needs the `capnp` tool). Made like
//! `safe/tests/structured_regen.rs`.

use std::path::{Path, PathBuf};

fn schema_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("schema")
}

#[test]
#[ignore = "needs the capnp tool; run benches/schema/regen.sh"]
fn regenerate_capnp() {
    let dir = schema_dir();
    let out = std::env::temp_dir().join(format!("flowipc-bench-capnp-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    // perf_demo includes perf_demo_capnp.rs at its crate root: no parent module.
    capnpc::CompilerCommand::new()
        .src_prefix(&dir)
        .file(dir.join("perf_demo.capnp"))
        .output_path(&out)
        .run()
        .unwrap_or_else(|e| panic!("capnp compile perf_demo.capnp: {e}"));
    let text = std::fs::read_to_string(out.join("perf_demo_capnp.rs")).unwrap();
    std::fs::write(dir.join("perf_demo_capnp.rs"), text).unwrap();
    std::fs::remove_dir_all(&out).unwrap();
}
