//! Binding a listening port that a process which just exited may still hold.
//!
//! A node's sockets live in io_uring requests, and the kernel tears a ring down in a work
//! queue *after* its process has exited and been reaped. For a few milliseconds (longer on a
//! loaded machine) the old process's listener is still in `LISTEN`, and the restarted node's
//! `bind` fails with `EADDRINUSE` even with `SO_REUSEADDR` (measured: `ss -tln` still lists the
//! port just after `wait` returned, in 3 of 8 stops). An operator's `systemctl restart`, or
//! a supervisor restarting a node killed with `-9`, must not fail on that, so an address in
//! use is retried for a bounded window before it is reported.

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

/// How long an address in use is retried: far above the ring teardown seen (under 10 ms),
/// and short enough that a port really taken by another process is reported promptly.
pub const ADDRESS_IN_USE_RETRY_WINDOW: Duration = Duration::from_secs(2);
/// Pause between two tries within [`ADDRESS_IN_USE_RETRY_WINDOW`].
const ADDRESS_IN_USE_RETRY_PAUSE: Duration = Duration::from_millis(20);

/// Binds and listens on `addr` (std's listener: `SO_REUSEADDR`, not `SO_REUSEPORT`, so a
/// second process can never share the port), retrying `EADDRINUSE` for
/// [`ADDRESS_IN_USE_RETRY_WINDOW`]; any other error, or the last `EADDRINUSE`, is returned.
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let deadline = Instant::now() + ADDRESS_IN_USE_RETRY_WINDOW;
    loop {
        match TcpListener::bind(addr) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                std::thread::sleep(ADDRESS_IN_USE_RETRY_PAUSE);
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_held_by_a_listener_is_reported_after_the_window_and_a_free_one_binds() {
        let held = TcpListener::bind("127.0.0.1:0").expect("a port");
        let addr = held.local_addr().expect("an address");
        let t0 = Instant::now();
        let e = listen(addr).expect_err("the port is taken");
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
        assert!(t0.elapsed() >= ADDRESS_IN_USE_RETRY_WINDOW, "retried for the window");
        // Released meanwhile: the retry picks it up.
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(held);
        });
        let l = listen(addr).expect("bound once the holder let go");
        assert_eq!(l.local_addr().expect("an address"), addr);
        releaser.join().expect("releaser");
    }
}
