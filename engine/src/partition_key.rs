//! Mapping application keys to user partitions: xxHash64 of the key, then Lamping & Veach's
//! jump consistent hash onto partitions `1..=partitions`. Partition 0 (system) is never
//! returned. The mapping is stable: the same key and partition count give the same
//! partition on every node and every version (it is part of the data layout).

use xxhash_rust::xxh64::xxh64;

/// Seed of the key hash. Changing it remaps every key: never change it.
const KEY_HASH_SEED: u64 = 0;

/// The user partition (`1..=partitions`) for `key`, routing by the prefix before the last
/// `/` (so `tenant-42/order-1` and `tenant-42/order-2` share a partition); a key without
/// `/` hashes whole. Returns 0 only when there are no user partitions.
#[must_use]
pub fn partition_key(key: &str, partitions: u32) -> u64 {
    let prefix = key.rsplit_once('/').map_or(key, |(p, _)| p);
    prefix_partition_key(prefix, partitions)
}

/// The user partition (`1..=partitions`) for the whole of `key`. Returns 0 only when there
/// are no user partitions.
#[must_use]
pub fn prefix_partition_key(key: &str, partitions: u32) -> u64 {
    if partitions == 0 {
        return 0;
    }
    u64::from(jump_consistent_hash(xxh64(key.as_bytes(), KEY_HASH_SEED), partitions)) + 1
}

/// Jump consistent hash (Lamping & Veach, 2014): a bucket in `0..buckets` such that growing
/// the bucket count moves only `1/buckets` of the keys.
#[must_use]
pub fn jump_consistent_hash(mut key: u64, buckets: u32) -> u32 {
    let (mut b, mut j) = (-1i64, 0i64);
    while j < i64::from(buckets) {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_zero_and_in_range() {
        for i in 0..10_000 {
            let p = prefix_partition_key(&format!("key-{i}"), 64);
            assert!((1..=64).contains(&p));
        }
        assert_eq!(prefix_partition_key("x", 0), 0);
        assert_eq!(prefix_partition_key("x", 1), 1);
    }

    #[test]
    fn prefix_routing_groups_keys() {
        assert_eq!(partition_key("tenant-42/order-1", 128), partition_key("tenant-42/order-2", 128));
        assert_eq!(partition_key("tenant-42/order-1", 128), prefix_partition_key("tenant-42", 128));
        assert_eq!(partition_key("a/b/c", 128), prefix_partition_key("a/b", 128));
    }

    #[test]
    fn stable_values() {
        // Part of the data layout: these must never change.
        assert_eq!(jump_consistent_hash(0, 1), 0);
        assert_eq!(jump_consistent_hash(1, 1000), jump_consistent_hash(1, 1000));
        let a = prefix_partition_key("tenant-42", 64);
        assert_eq!(a, prefix_partition_key("tenant-42", 64));
    }

    #[test]
    fn spreads_evenly_and_moves_little() {
        let n = 20_000;
        let mut counts = [0u32; 16];
        let mut moved = 0;
        for i in 0..n {
            let k = xxh64(format!("k{i}").as_bytes(), 0);
            let b16 = jump_consistent_hash(k, 16);
            counts[b16 as usize] += 1;
            if jump_consistent_hash(k, 17) != b16 {
                moved += 1;
            }
        }
        for c in counts {
            assert!((1000..1500).contains(&c), "uneven bucket: {c}");
        }
        // Growing 16 → 17 buckets moves about 1/17 of the keys.
        assert!((900..1500).contains(&moved), "moved {moved}");
    }
}
