//! What each request touches: the partition (uniform or Zipfian), and a key of that
//! partition. Keys are built so that the engine's own key routing
//! (`phalanx::partition_key::partition_key`) sends them to the chosen partition: in embedded
//! mode the bench addresses the partition directly, in remote mode the server routes by key,
//! and both must agree for reads to find what was written.

use phalanx::partition_key::prefix_partition_key;

/// How requests pick partitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyDistribution {
    /// Every partition equally.
    Uniform,
    /// Zipfian (s = 0.99, as YCSB): a few partitions get most requests.
    Zipfian,
}

/// A Zipfian sampler over `1..=n` (Gray et al.'s method, as YCSB uses).
#[derive(Clone, Debug)]
pub struct Zipf {
    n: u64,
    theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
}

impl Zipf {
    /// A sampler over `1..=n` with skew `theta` (0 < theta < 1).
    #[must_use]
    pub fn new(n: u64, theta: f64) -> Self {
        let n = n.max(1);
        let zeta = |k: u64| (1..=k).map(|i| 1.0 / (i as f64).powf(theta)).sum::<f64>();
        let zetan = zeta(n);
        let zeta2 = zeta(2.min(n));
        let alpha = 1.0 / (1.0 - theta);
        let eta =
            if n == 1 { 0.0 } else { (1.0 - (2.0 / n as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan) };
        Zipf { n, theta, alpha, zetan, eta }
    }

    /// Maps a uniform `u` in `[0, 1)` to `1..=n`.
    #[must_use]
    pub fn sample(&self, u: f64) -> u64 {
        let uz = u * self.zetan;
        if uz < 1.0 || self.n == 1 {
            return 1;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 2.min(self.n);
        }
        (1 + (self.n as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64).min(self.n)
    }
}

/// xorshift64*: each client's cheap random stream (seeded per client so runs repeat).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A stream for client `id` (never the all-zero state xorshift cannot leave).
    #[must_use]
    pub fn for_client(id: usize) -> Self {
        Rng(0x9E37_79B9_7F4A_7C15 ^ (id as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// Picks partitions and builds keys that route to them.
#[derive(Clone, Debug)]
pub struct KeySpace {
    partitions: u32,
    zipf: Option<Zipf>,
    /// `prefixes[p - 1]`: a key prefix the engine routes to partition `p`.
    prefixes: Vec<String>,
    /// Keys per partition.
    pub keys_per_partition: u64,
    /// Bytes of every key (at least what the prefix and index need).
    pub key_size: usize,
}

impl KeySpace {
    /// A key space over `partitions` user partitions. Finding a routing prefix for every
    /// partition hashes about `partitions × ln(partitions)` candidates (milliseconds for
    /// 10,000 partitions).
    #[must_use]
    pub fn new(partitions: u32, dist: KeyDistribution, keys_per_partition: u64, key_size: usize) -> Self {
        let mut prefixes = vec![String::new(); partitions as usize];
        let mut missing = partitions as usize;
        let mut i = 0u64;
        while missing > 0 {
            let candidate = format!("b{i}");
            let p = prefix_partition_key(&candidate, partitions) as usize;
            if (1..=partitions as usize).contains(&p) && prefixes[p - 1].is_empty() {
                prefixes[p - 1] = candidate;
                missing -= 1;
            }
            i += 1;
        }
        KeySpace {
            partitions,
            zipf: (dist == KeyDistribution::Zipfian).then(|| Zipf::new(u64::from(partitions), 0.99)),
            prefixes,
            keys_per_partition: keys_per_partition.max(1),
            key_size,
        }
    }

    /// User partitions.
    #[must_use]
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// A partition for the next request.
    pub fn partition(&self, rng: &mut Rng) -> u64 {
        match &self.zipf {
            Some(z) => z.sample(rng.unit()),
            None => 1 + rng.below(u64::from(self.partitions)),
        }
    }

    /// Key number `n` of partition `p`, padded to `key_size` bytes. The engine routes by the
    /// part before the last `/`, so every key of `p` shares `p`'s prefix.
    #[must_use]
    pub fn key(&self, p: u64, n: u64) -> String {
        let prefix = self.prefixes.get((p.max(1) - 1) as usize).map_or("b0", String::as_str);
        let index = n.to_string();
        let pad = self.key_size.saturating_sub(prefix.len() + 1 + index.len());
        let mut k = String::with_capacity(prefix.len() + 1 + pad + index.len());
        k.push_str(prefix);
        k.push('/');
        k.extend(std::iter::repeat_n('k', pad));
        k.push_str(&index);
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use phalanx::partition_key::partition_key;

    #[test]
    fn keys_route_to_their_partition_and_have_the_asked_size() {
        for parts in [1u32, 7, 64, 1000] {
            let ks = KeySpace::new(parts, KeyDistribution::Uniform, 10, 256);
            for p in 1..=u64::from(parts) {
                let k = ks.key(p, 3);
                assert_eq!(partition_key(&k, parts), p);
                assert_eq!(k.len(), 256);
            }
        }
        let ks = KeySpace::new(4, KeyDistribution::Uniform, 10, 1);
        assert_eq!(partition_key(&ks.key(2, 12345), 4), 2, "short key sizes still route");
    }

    #[test]
    fn zipf_is_skewed_and_in_range() {
        let z = Zipf::new(64, 0.99);
        let mut rng = Rng::for_client(1);
        let mut hist = [0u32; 65];
        for _ in 0..100_000 {
            let s = z.sample(rng.unit());
            assert!((1..=64).contains(&s));
            hist[s as usize] += 1;
        }
        assert!(hist[1] > hist[32] * 10, "partition 1 is hot: {} vs {}", hist[1], hist[32]);
        assert_eq!(Zipf::new(1, 0.99).sample(0.7), 1);
    }
}
