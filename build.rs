//! Compiles `proto/` with protox (a pure-Rust protobuf compiler), so that no
//! system `protoc` is needed to build cardd.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/cardd/v1/cardd.proto"];
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(files, ["proto"])?;
    let mut config = prost_build::Config::new();
    // The parts of the brand state that are protobuf types are also kept in
    // its snapshots (serde, see src/snapshot.rs).
    for message in [
        "Rules",
        "BonusTier",
        "TierRule",
        "ShiftTotals",
        "Campaign",
        "StoreRef",
        "PointsRedemption",
        "StorePromotion",
    ] {
        config.message_attribute(
            format!(".cardd.v1.{message}"),
            "#[derive(serde::Serialize, serde::Deserialize)]",
        );
    }
    for e in ["CardStatus", "RecordKind"] {
        config.enum_attribute(
            format!(".cardd.v1.{e}"),
            "#[derive(serde::Serialize, serde::Deserialize)]",
        );
    }
    config.compile_fds(fds)?;
    Ok(())
}
