//! Where the envoy-types crate keeps Envoy's .proto files, for grpcurl and ghz (the decision point serves
//! no reflection). Shared by tests/e2e_grpc.rs and benches/pdp_grpc_load.rs.

use std::path::PathBuf;
use std::process::Command;

/// The `proto` directory of the envoy-types package this build uses, from `cargo metadata` offline. Only
/// this machine's platform is resolved (`--filter-platform`): the packages of other platforms (Android,
/// Windows) are never downloaded by a build here, and an offline resolve of all platforms would need them.
pub fn proto_dir() -> PathBuf {
    let cargo = env!("CARGO");
    let rustc = std::path::Path::new(cargo).with_file_name("rustc");
    let rustc = if rustc.exists() { rustc } else { PathBuf::from("rustc") };
    let vv = Command::new(&rustc).arg("-vV").output().expect("rustc -vV");
    let vv = String::from_utf8_lossy(&vv.stdout);
    let host = vv.lines().find_map(|l| l.strip_prefix("host: ")).expect("rustc -vV names the host triple").trim();
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline", "--filter-platform", host])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata");
    assert!(out.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
    let manifest = v["packages"]
        .as_array()
        .expect("cargo metadata lists packages")
        .iter()
        .find(|p| p["name"] == "envoy-types")
        .and_then(|p| p["manifest_path"].as_str())
        .expect("envoy-types among the dependencies");
    std::path::Path::new(manifest).parent().expect("a manifest has a directory").join("proto")
}
