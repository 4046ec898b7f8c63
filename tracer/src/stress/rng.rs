//! A small seeded generator (SplitMix64) so `--seed` reproduces the workload's choices (which
//! pages each pin takes, the jitter between forks) without a dependency.

pub struct Rng(u64);

impl Rng {
    /// An independent stream for thread `index` of the same run.
    pub fn stream(seed: u64, index: u64) -> Rng {
        let mut r = Rng(seed ^ index.wrapping_mul(0xA076_1D64_78BD_642F));
        r.next_u64();
        r
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0; the modulo bias is irrelevant at these sizes).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn same_seed_same_choices_and_streams_differ() {
        let a: Vec<u64> = (0..8)
            .map({
                let mut r = Rng::stream(7, 0);
                move |_| r.below(1000)
            })
            .collect();
        let b: Vec<u64> = (0..8)
            .map({
                let mut r = Rng::stream(7, 0);
                move |_| r.below(1000)
            })
            .collect();
        assert_eq!(a, b);
        let s0: Vec<u64> = (0..8)
            .map({
                let mut r = Rng::stream(7, 0);
                move |_| r.next_u64()
            })
            .collect();
        let s1: Vec<u64> = (0..8)
            .map({
                let mut r = Rng::stream(7, 1);
                move |_| r.next_u64()
            })
            .collect();
        assert_ne!(s0, s1);
        assert!(a.iter().all(|&x| x < 1000));
    }
}
