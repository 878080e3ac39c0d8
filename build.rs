//! Build script: compiles the Teleport protos (no system `protoc` needed) and records the version
//! details printed by `teleport-email version`.

use std::process::Command;

use prost::Message;

fn main() {
    compile_protos();
    record_version();
}

/// Compiles `proto/` with protox (pure Rust) and generates the tonic client and server. The
/// descriptor set is kept too, so a test can check every field number against our wire table.
fn compile_protos() {
    let roots = [
        "proto/teleport/legacy/client/proto/authservice.proto",
        "proto/teleport/accessmonitoringrules/v1/access_monitoring_rules_service.proto",
        "proto/teleport/users/v1/users_service.proto",
        "proto/teleport/accesslist/v1/accesslist_service.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    let fds = match protox::compile(roots, ["proto"]) {
        Ok(fds) => fds,
        Err(e) => panic!("cannot compile the protos: {e}"),
    };
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let descriptor = std::path::Path::new(&out).join("teleport_descriptor.bin");
    std::fs::write(&descriptor, fds.encode_to_vec()).expect("OUT_DIR is writable");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)
        .expect("generating the gRPC code");
}

fn record_version() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc_version = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.split_whitespace().nth(1).map(str::to_owned))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=TELEPORT_EMAIL_RUSTC=rustc{rustc_version}");

    let git = Command::new("git")
        .args(["describe", "--tags", "--always", "--dirty"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
    if let Some(git) = git {
        println!("cargo:rustc-env=TELEPORT_EMAIL_GIT_REF={git}");
    }
    for path in [".git/HEAD", ".git/index"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
