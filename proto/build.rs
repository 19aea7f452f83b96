//! Compiles `posterior/v1/*.proto` with protox (a pure-Rust protobuf
//! compiler), so an ordinary build needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "posterior/v1/sample.proto",
        "posterior/v1/params.proto",
        "posterior/v1/version.proto",
        "posterior/v1/service.proto",
        "posterior/v1/control.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["."])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("posterior_v1_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .codec_path("crate::codec::SliceCodec")
        .compile_fds(descriptors)?;
    Ok(())
}
