//! The generic suite, instantiated for both transports of this crate, TCP also with TLS.

macro_rules! suite {
    ($($check:ident),* $(,)?) => {
        mod tcp {
            $(
                #[test]
                fn $check() {
                    crate::conformance::$check(&mut crate::conformance::fixtures::TcpFixture::new());
                }
            )*
        }
        mod tls {
            $(
                #[test]
                fn $check() {
                    crate::conformance::$check(&mut crate::conformance::fixtures::TcpFixture::with_tls());
                }
            )*
        }
        mod memory {
            $(
                #[test]
                fn $check() {
                    crate::conformance::$check(&mut crate::conformance::fixtures::MemoryFixture::new());
                }
            )*
        }
    };
}

suite!(
    check_in_order,
    check_shard_mapping,
    check_reconnect_after_restart,
    check_drops_when_peer_down,
    check_slow_receiver_is_bounded,
    check_inbox_full_is_counted,
    check_self_and_unknown_peers,
    check_contract_violations_never_delivered,
    check_clean_shutdown,
);
