//! The intrinsic costs a durable write cannot avoid, measured in the same run as the load
//! so the single-client latency can be compared with them side by side (the machine's
//! fsync time moves a lot with other tenants' load):
//!
//! - **fsync**: a 4 KiB overwrite inside a preallocated file followed by `fdatasync`, in the
//!   directory the cluster writes to (the WAL also preallocates its segments, so appending
//!   to a growing file would overstate the cost);
//! - **loopback round trip**: a 64-byte ping-pong over a TCP connection on 127.0.0.1
//!   (plain blocking sockets; `cargo run --release -p phalanx-net --example net_probe`
//!   measures the engine's own transport).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// Bytes per probe write.
const FSYNC_BLOCK_BYTES: usize = 4096;
/// Size of the preallocated probe file.
const FSYNC_FILE_BYTES: usize = 1 << 20;
/// Bytes per ping.
const PING_BYTES: usize = 64;

/// Medians of both probes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProbeResult {
    /// Median `pwrite` + `fdatasync` of 4 KiB, µs.
    pub fsync_p50_us: f64,
    /// Median loopback TCP round trip, µs.
    pub rtt_p50_us: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median of `iterations` synced 4 KiB overwrites of a file in `dir` (removed afterwards).
pub fn fsync_p50_us(dir: &Path, iterations: usize) -> Result<f64, String> {
    let path = dir.join(format!("phalanx-bench-fsync-probe-{}", std::process::id()));
    let run = || -> std::io::Result<f64> {
        let f = std::fs::OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&path)?;
        f.write_all_at(&vec![0u8; FSYNC_FILE_BYTES], 0)?;
        f.sync_all()?;
        let block = vec![0xA5u8; FSYNC_BLOCK_BYTES];
        let slots = (FSYNC_FILE_BYTES / FSYNC_BLOCK_BYTES) as u64;
        let mut samples = Vec::with_capacity(iterations);
        for i in 0..iterations as u64 {
            let t = Instant::now();
            f.write_all_at(&block, (i % slots) * FSYNC_BLOCK_BYTES as u64)?;
            f.sync_data()?;
            samples.push(t.elapsed().as_secs_f64() * 1e6);
        }
        Ok(median(samples))
    };
    let r = run();
    let _ = std::fs::remove_file(&path);
    r.map_err(|e| format!("fsync probe in {}: {e}", dir.display()))
}

/// Median of `iterations` 64-byte round trips over loopback TCP.
pub fn loopback_rtt_p50_us(iterations: usize) -> Result<f64, String> {
    let run = || -> std::io::Result<f64> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let echo = std::thread::spawn(move || -> std::io::Result<()> {
            let (mut s, _) = listener.accept()?;
            s.set_nodelay(true)?;
            let mut buf = [0u8; PING_BYTES];
            loop {
                match s.read_exact(&mut buf) {
                    Ok(()) => s.write_all(&buf)?,
                    Err(_) => return Ok(()),
                }
            }
        });
        let mut c = TcpStream::connect(addr)?;
        c.set_nodelay(true)?;
        c.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut buf = [7u8; PING_BYTES];
        let mut samples = Vec::with_capacity(iterations);
        for _ in 0..iterations {
            let t = Instant::now();
            c.write_all(&buf)?;
            c.read_exact(&mut buf)?;
            samples.push(t.elapsed().as_secs_f64() * 1e6);
        }
        drop(c);
        let _ = echo.join();
        Ok(median(samples))
    };
    run().map_err(|e| format!("loopback probe: {e}"))
}

/// Both probes.
pub fn run(dir: &Path) -> Result<ProbeResult, String> {
    Ok(ProbeResult { fsync_p50_us: fsync_p50_us(dir, 200)?, rtt_p50_us: loopback_rtt_p50_us(2_000)? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_measure_something_and_clean_up() {
        let dir = tempfile::tempdir().unwrap();
        let f = fsync_p50_us(dir.path(), 5).unwrap();
        assert!(f > 0.0);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert!(loopback_rtt_p50_us(50).unwrap() > 0.0);
    }
}
