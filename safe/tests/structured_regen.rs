//! The generator of the checked-in Rust for `safe/schema/*.capnp` (run by `safe/schema/regen.sh`,
//! ignored otherwise: it needs the `capnp` tool).

use std::path::{Path, PathBuf};

fn schema_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("schema")
}

/// Compiles `file` with capnpc into a scratch folder, with the generated code placed under
/// `parent` (the module path that includes it), and copies the result next to the schema.
fn generate(file: &str, parent: &[&str]) {
    let dir = schema_dir();
    let out = std::env::temp_dir().join(format!("flowipc-capnp-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    capnpc::CompilerCommand::new()
        .src_prefix(&dir)
        .file(dir.join(file))
        .output_path(&out)
        .default_parent_module(parent.iter().map(|s| s.to_string()).collect())
        .run()
        .unwrap_or_else(|e| panic!("capnp compile {file}: {e}"));
    let stem = file.trim_end_matches(".capnp");
    let generated = out.join(format!("{stem}_capnp.rs"));
    let text = std::fs::read_to_string(&generated).unwrap();
    std::fs::write(dir.join(format!("{stem}_capnp.rs")), text).unwrap();
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
#[ignore = "needs the capnp tool; run safe/schema/regen.sh"]
fn regenerate_capnp() {
    generate("envelope.capnp", &["structured", "wire"]);
    // Examples and tests include ping_capnp.rs at their crate root.
    generate("ping.capnp", &[]);
}
