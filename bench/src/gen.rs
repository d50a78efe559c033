//! Deterministic data: a seeded xorshift generator (incompressible bytes) and English-like text
//! (compressible, ~2.4x with zstd level 1). Same seed, same bytes, on every machine: the corpus and
//! the stage benchmarks must be reproducible, so nothing here reads the OS's randomness.

/// xorshift64* seeded through splitmix64 (so seeds 0, 1, 2... give unrelated streams).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // xorshift's only fixed point is zero.
        Rng(if z == 0 { 0x2545_F491_4F6C_DD1D } else { z })
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (0 when n is 0); multiply-shift, no modulo bias worth the name.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `lo..hi` (lo when the range is empty).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo))
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Log-uniform in `lo..hi`: as many files of 1-2 KiB as of 32-64 KiB, like real trees.
    pub fn log_range(&mut self, lo: u64, hi: u64) -> u64 {
        let (l, h) = ((lo.max(1) as f64).ln(), (hi.max(lo + 1) as f64).ln());
        ((l + (h - l) * self.unit()).exp() as u64).clamp(lo, hi.saturating_sub(1).max(lo))
    }

    /// An independent generator, so one file's content does not shift every later file.
    pub fn fork(&mut self) -> Rng {
        Rng::new(self.next_u64())
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }
}

/// `len` incompressible bytes.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Rng::new(seed).fill(&mut v);
    v
}

/// `len` bytes of English-like text.
pub fn text(seed: u64, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    Text::new(seed).fill(&mut v, len);
    v
}

const COMMON: &[&str] = &[
    "the", "of", "and", "to", "a", "in", "is", "it", "you", "that", "he", "was", "for", "on", "are", "with",
    "as", "his", "they", "be", "at", "one", "have", "this", "from", "or", "had", "by", "not", "word", "but",
    "what", "some", "we", "can", "out", "other", "were", "all", "there", "when", "up", "use", "your", "how",
    "said", "an", "each", "she", "which", "do", "their", "time", "if", "will", "way", "about", "many",
    "then", "them", "write", "would", "like", "so", "these", "her", "long", "make", "thing", "see", "him",
    "two", "has", "look", "more", "day", "could", "go", "come", "did", "number", "sound", "no", "most",
    "people", "my", "over", "know", "water", "than", "call", "first", "who", "may", "down", "side", "been",
    "now", "find", "any", "new", "work", "part", "take", "get", "place", "made", "live", "where", "after",
    "back", "little", "only", "round", "man", "year", "came", "show", "every", "good", "me", "give", "our",
    "under", "name", "very", "through", "just", "form", "sentence", "great", "think", "say", "help", "low",
    "line", "differ", "turn", "cause", "much", "mean", "before", "move", "right", "boy", "old", "too",
    "same", "tell", "does", "set", "three", "want", "air", "well", "also", "play", "small", "end", "put",
    "home", "read", "hand", "port", "large", "spell", "add", "even", "land", "here", "must", "big", "high",
    "such", "follow", "act", "why", "ask", "men", "change", "went", "light", "kind", "off", "need", "house",
    "picture", "try", "us", "again", "animal", "point", "mother", "world", "near", "build", "self", "earth",
    "father", "head", "stand", "own", "page", "should", "country", "found", "answer", "school", "grow",
    "study", "still", "learn", "plant", "cover", "food", "sun", "four", "between", "state", "keep", "eye",
    "never", "last", "let", "thought", "city", "tree", "cross", "farm", "hard", "start", "might", "story",
    "saw", "far", "sea", "draw", "left", "late", "run", "while", "press",
];

const SYLLABLES: &[&str] = &[
    "ba", "con", "de", "ex", "for", "gra", "in", "ka", "lo", "men", "ni", "or", "pre", "qui", "ra", "sion",
    "ter", "un", "ver", "ing", "tion", "al", "ly", "ment", "ous", "est", "ble", "ure", "ist", "ac", "po",
    "si", "tu", "vi", "mo", "ne", "ri", "sa", "ta", "ze",
];

/// English-like text: Zipf-ish word frequencies over ~2,000 words, sentences, paragraphs and
/// lines wrapped at ~72 columns, which is what makes prose compress (~2.4x at zstd level 1; real English ~2.8x).
pub struct Text {
    rng: Rng,
    words: Vec<Vec<u8>>,
    col: usize,
    left_in_sentence: u64,
    sentences_left: u64,
}

impl Text {
    pub fn new(seed: u64) -> Self {
        // The vocabulary is the same for every seed; only the word sequence depends on it.
        let mut vr = Rng::new(0x5EED_0F40_07D5);
        let mut words: Vec<Vec<u8>> = COMMON.iter().map(|w| w.as_bytes().to_vec()).collect();
        for _ in 0..1800 {
            let mut w = Vec::new();
            for _ in 0..vr.range(2, 5) {
                w.extend_from_slice(SYLLABLES[vr.below(SYLLABLES.len() as u64) as usize].as_bytes());
            }
            words.push(w);
        }
        Text { rng: Rng::new(seed), words, col: 0, left_in_sentence: 0, sentences_left: 5 }
    }

    fn word(&mut self) -> usize {
        // u^4 puts about half of all picks among the ~230 common words.
        let u = self.rng.unit();
        ((u * u * u * u) * self.words.len() as f64) as usize
    }

    /// Appends exactly `n` bytes to `out`.
    pub fn fill(&mut self, out: &mut Vec<u8>, n: usize) {
        let target = out.len() + n;
        while out.len() < target {
            let start_sentence = self.left_in_sentence == 0;
            if start_sentence {
                self.left_in_sentence = self.rng.range(4, 20);
            }
            let i = self.word().min(self.words.len() - 1);
            let w = &self.words[i];
            if self.col + w.len() > 72 {
                out.push(b'\n');
                self.col = 0;
            } else if self.col > 0 {
                out.push(b' ');
                self.col += 1;
            }
            let at = out.len();
            out.extend_from_slice(w);
            if start_sentence {
                out[at] = out[at].to_ascii_uppercase();
            }
            self.col += w.len();
            self.left_in_sentence -= 1;
            if self.left_in_sentence == 0 {
                out.push(b'.');
                self.col += 1;
                self.sentences_left = self.sentences_left.saturating_sub(1);
                if self.sentences_left == 0 {
                    out.extend_from_slice(b"\n\n");
                    self.col = 0;
                    self.sentences_left = self.rng.range(2, 8);
                }
            } else if self.rng.chance(0.06) {
                out.push(b',');
                self.col += 1;
            }
        }
        out.truncate(target);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_bytes() {
        assert_eq!(random_bytes(7, 1000), random_bytes(7, 1000));
        assert_ne!(random_bytes(7, 1000), random_bytes(8, 1000));
        assert_eq!(text(7, 5000), text(7, 5000));
        assert_eq!(text(7, 5000).len(), 5000);
    }

    #[test]
    fn ranges_hold() {
        let mut r = Rng::new(1);
        for _ in 0..10_000 {
            let x = r.log_range(512, 64 * 1024);
            assert!((512..64 * 1024).contains(&x));
            assert!(r.below(3) < 3);
        }
    }
}
