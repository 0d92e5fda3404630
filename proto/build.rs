//! Compiles `proto/**/*.proto` with protox (a pure-Rust protobuf compiler), so building
//! Phalanx never needs a system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/phalanx/v1/raft.proto",
        "proto/phalanx/v1/net.proto",
        "proto/phalanx/v1/client.proto",
        "proto/phalanx/v1/system.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    prost_build::Config::new()
        // Payloads are shared between the log, the WAL batch and outgoing frames: `Bytes`
        // makes those copies reference counts instead of memcpy.
        .bytes(["."])
        // Every message of every group travels as a `RaftMessage`, moved through queues and
        // batches many times per turn: boxing the rare, large bodies keeps it small (the
        // common append/heartbeat/vote bodies stay inline).
        .boxed(".phalanx.v1.RaftMessage.body.snapshot")
        .boxed(".phalanx.v1.RaftMessage.body.forwarded_proposal")
        // A status answer is rare; its counters would make every client answer larger.
        .boxed(".phalanx.v1.StatusResponse.client_port")
        .compile_fds(descriptors)?;
    Ok(())
}
