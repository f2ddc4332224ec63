//! Generates the CRI `runtime.v1` ImageService client from `proto/` (see `src/cri.rs`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        // AuthConfig carries passwords and tokens: `src/cri.rs` implements a
        // Debug that prints them as `<redacted>` instead of the derived one.
        .skip_debug([".runtime.v1.AuthConfig"])
        .compile_protos(&["proto/runtime/v1/api.proto"], &["proto"])?;
    Ok(())
}
