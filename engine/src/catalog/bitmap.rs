//! Sets of version ids: a plain bitmap in memory (one bit per version: 50 KB for 400,000
//! versions), runs `[start, end)` on disk and in deltas.

/// A half-open range `[start, end)` of version ids.
pub type Run = (u32, u32);

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bitmap(Vec<u64>);

impl Bitmap {
    pub fn insert(&mut self, v: u32) {
        let (w, b) = (v as usize / 64, v % 64);
        if w >= self.0.len() {
            self.0.resize(w + 1, 0);
        }
        self.0[w] |= 1 << b;
    }

    pub fn contains(&self, v: u32) -> bool {
        self.0.get(v as usize / 64).is_some_and(|w| w & (1 << (v % 64)) != 0)
    }

    pub fn insert_runs(&mut self, runs: &[Run]) {
        for &(a, b) in runs {
            for v in a..b {
                self.insert(v);
            }
        }
    }

    pub fn remove_runs(&mut self, runs: &[Run]) {
        for &(a, b) in runs {
            for v in a..b {
                if let Some(w) = self.0.get_mut(v as usize / 64) {
                    *w &= !(1 << (v % 64));
                }
            }
        }
    }

    /// Adds every member of `other`.
    pub fn union_with(&mut self, other: &Bitmap) {
        if other.0.len() > self.0.len() {
            self.0.resize(other.0.len(), 0);
        }
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a |= b;
        }
    }

    /// Bytes on the heap, by capacity.
    pub fn heap_bytes(&self) -> u64 {
        self.0.capacity() as u64 * 8
    }

    pub fn count(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Members of `self` that are not in `other`, as sorted, non-adjacent runs.
    pub fn runs_minus(&self, other: &Bitmap) -> Vec<Run> {
        let mut out: Vec<Run> = Vec::new();
        for (i, &w) in self.0.iter().enumerate() {
            let mut w = w & !other.0.get(i).copied().unwrap_or(0);
            while w != 0 {
                let v = (i * 64) as u32 + w.trailing_zeros();
                w &= w - 1;
                match out.last_mut() {
                    Some(last) if last.1 == v => last.1 = v + 1,
                    _ => out.push((v, v + 1)),
                }
            }
        }
        out
    }

    pub fn runs(&self) -> Vec<Run> {
        self.runs_minus(&Bitmap::default())
    }
}

/// Whether `runs` are sorted, non-empty, non-adjacent and below `limit`.
pub fn valid_runs(runs: &[Run], limit: usize) -> bool {
    runs.iter().all(|r| r.0 < r.1 && r.1 as usize <= limit) && runs.windows(2).all(|w| w[0].1 < w[1].0)
}

/// Sorts and merges runs into disjoint, non-adjacent ones.
pub fn normalize(mut runs: Vec<Run>) -> Vec<Run> {
    runs.sort_unstable();
    let mut out: Vec<Run> = Vec::with_capacity(runs.len().min(64));
    for r in runs.into_iter().filter(|r| r.0 < r.1) {
        match out.last_mut() {
            Some(last) if r.0 <= last.1 => last.1 = last.1.max(r.1),
            _ => out.push(r),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_and_runs() {
        let mut a = Bitmap::default();
        a.insert_runs(&[(0, 3), (63, 66), (200, 201)]);
        assert_eq!(a.runs(), vec![(0, 3), (63, 66), (200, 201)]);
        assert_eq!(a.count(), 7);
        let mut b = a.clone();
        b.remove_runs(&[(1, 2), (64, 65)]);
        b.insert(300);
        assert!(b.contains(300) && !b.contains(1) && !b.contains(10_000));
        assert_eq!(a.runs_minus(&b), vec![(1, 2), (64, 65)]);
        assert_eq!(b.runs_minus(&a), vec![(300, 301)]);
        a.union_with(&b);
        assert_eq!(a.runs(), vec![(0, 3), (63, 66), (200, 201), (300, 301)]);
    }

    #[test]
    fn runs_normalize() {
        assert_eq!(
            normalize(vec![(5, 6), (0, 1), (1, 2), (3, 5), (9, 10), (9, 12), (4, 4)]),
            vec![(0, 2), (3, 6), (9, 12)]
        );
        assert!(valid_runs(&[(0, 2), (3, 4)], 4));
        assert!(!valid_runs(&[(0, 2), (2, 4)], 4), "adjacent runs are one run");
        assert!(!valid_runs(&[(0, 5)], 4));
        assert!(!valid_runs(&[(3, 3)], 4));
    }
}
