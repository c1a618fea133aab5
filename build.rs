//! Compiles `proto/` with protox (a pure-Rust protobuf compiler), so that no
//! system `protoc` is needed to build cardd.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/cardd/v1/cardd.proto"];
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(files, ["proto"])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
