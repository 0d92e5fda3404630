//! Fault hooks of the in-memory transport.

use std::time::Duration;

use super::fixtures::MemoryFixture;
use super::{Fixture, TestNode, WAIT_LIMIT, collect, wait_until};

fn node(fx: &mut MemoryFixture, id: u64, tx: &flume::Sender<super::Delivered>) -> TestNode {
    TestNode::start(id, fx.factory(id), 1, tx.clone()).unwrap()
}

/// Whether one batch from `from` reaches `to` within a short wait.
fn reaches(from: &TestNode, to: &TestNode, rx: &flume::Receiver<super::Delivered>) -> bool {
    from.send_seq(0, to.id, 1);
    let got = collect(rx, 1, Duration::from_millis(100));
    got.iter().all(|d| d.node == to.id && d.inbound.from == from.id) && got.len() == 1
}

#[test]
fn cut_and_heal_one_way_and_both() {
    let mut fx = MemoryFixture::new();
    let (tx, rx) = flume::unbounded();
    let (a, b) = (node(&mut fx, 1, &tx), node(&mut fx, 2, &tx));
    assert!(reaches(&a, &b, &rx) && reaches(&b, &a, &rx));
    fx.net.cut(1, 2);
    assert!(!reaches(&a, &b, &rx), "cut direction delivers");
    assert!(reaches(&b, &a, &rx), "the other direction is cut too");
    assert_eq!(a.stats(0).batches_dropped_unreachable, 1);
    fx.net.heal(1, 2);
    assert!(reaches(&a, &b, &rx));
    fx.net.cut_both(1, 2);
    assert!(!reaches(&a, &b, &rx) && !reaches(&b, &a, &rx));
    fx.net.heal_both(1, 2);
    assert!(reaches(&a, &b, &rx) && reaches(&b, &a, &rx));
    assert!(a.shutdown() && b.shutdown());
}

#[test]
fn isolate_partition_and_heal_all() {
    let mut fx = MemoryFixture::new();
    let (tx, rx) = flume::unbounded();
    let (a, b, c) = (node(&mut fx, 1, &tx), node(&mut fx, 2, &tx), node(&mut fx, 3, &tx));
    fx.net.isolate(3);
    assert!(!reaches(&a, &c, &rx) && !reaches(&c, &b, &rx));
    assert!(reaches(&a, &b, &rx));
    fx.net.rejoin(3);
    assert!(reaches(&a, &c, &rx) && reaches(&c, &b, &rx));
    fx.net.partition(&[1], &[2, 3]);
    assert!(!reaches(&a, &b, &rx) && !reaches(&c, &a, &rx));
    assert!(reaches(&b, &c, &rx));
    fx.net.isolate(2);
    fx.net.heal_all();
    assert!(reaches(&a, &b, &rx) && reaches(&b, &c, &rx) && reaches(&c, &a, &rx));
    assert!(a.shutdown() && b.shutdown() && c.shutdown());
    assert_eq!(fx.leftovers(), None);
}

#[test]
fn cut_drops_traffic_already_in_flight() {
    let mut fx = MemoryFixture::new();
    let (tx, rx) = flume::unbounded();
    let (a, b) = (node(&mut fx, 1, &tx), node(&mut fx, 2, &tx));
    b.stall(0, Duration::from_millis(200));
    std::thread::sleep(Duration::from_millis(20));
    a.send_seq(0, 2, 10);
    assert!(wait_until(WAIT_LIMIT, || a.stats(0).batches_sent == 10));
    fx.net.cut(1, 2);
    assert!(wait_until(WAIT_LIMIT, || b.stats(0).batches_dropped_unreachable == 10), "{:?}", b.stats(0));
    assert!(rx.try_recv().is_err());
    assert!(a.shutdown() && b.shutdown());
}

#[test]
fn restart_with_another_shard_count() {
    let mut fx = MemoryFixture::new();
    let (tx, rx) = flume::unbounded();
    let a = node(&mut fx, 1, &tx);
    let b = TestNode::start(2, fx.factory(2), 2, tx.clone()).unwrap();
    assert!(b.shutdown());
    let b = TestNode::start(2, fx.factory(2), 3, tx.clone()).unwrap();
    assert!(reaches(&a, &b, &rx));
    // A second start of a running shard is refused.
    let dup = TestNode::start(2, fx.factory(2), 3, tx.clone());
    assert!(dup.is_err());
    assert!(a.shutdown() && b.shutdown());
}
