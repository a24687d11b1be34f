//! Compiles every `.proto` under `proto/` without protoc (protox parses them), embeds the
//! descriptor set for run-time reflection, and generates the Rust types and gRPC stubs.
//! Adding a contract is adding a `.proto` file: nothing here changes.

use std::{
    env, fs,
    path::{Path, PathBuf},
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    println!("cargo:rerun-if-changed={}", root.display());

    let mut files = Vec::new();
    collect_protos(&root, &root, &mut files)?;
    files.sort();
    let mut compiler = protox::Compiler::new([&root])?;
    compiler.include_imports(true).include_source_info(false);
    compiler.open_files(&files)?;

    // Encoded by protox itself: prost's FileDescriptorSet drops unknown fields, and
    // custom option values (e.g. `(contracts.topic)`) are exactly that.
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out.join("descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    let descriptors = compiler.file_descriptor_set();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // The contract's RPC is named Connect, which would collide with the generated
        // `connect(endpoint)` constructor: clients are built with `new(channel)`.
        .build_transport(false)
        .compile_fds(descriptors)?;
    Ok(())
}

/// Every `.proto` below `dir`, as a path relative to `root` (the import root).
fn collect_protos(root: &Path, dir: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(root, &path, files)?;
        } else if path.extension().is_some_and(|e| e == "proto")
            && let Ok(relative) = path.strip_prefix(root)
        {
            files.push(relative.to_path_buf());
        }
    }
    Ok(())
}
