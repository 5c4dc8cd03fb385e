//! Byte-level BPE (GPT-2 style, with CLIP's `</w>` end-of-word marker) and its vocabulary.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::RwLock;

/// Words whose ids are kept in the cache, at most. Past that the cache is emptied and refilled,
/// so adversarial input cannot make it grow without bound.
const CACHE_CAPACITY: usize = 65_536;

/// Longer words (in bytes) are encoded every time rather than cached.
const MAX_CACHED_WORD: usize = 256;

/// GPT-2's `bytes_to_unicode`: the printable character that stands for each byte in the
/// vocabulary, in the order of the first 256 vocabulary entries (printable bytes first).
pub(crate) fn byte_symbols() -> Vec<(u8, char)> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut symbols: Vec<(u8, char)> = (0..=255u8)
        .filter(|&b| printable(b))
        .map(|b| (b, char::from(b)))
        .collect();
    for (code, b) in (256u32..).zip((0..=255u8).filter(|&b| !printable(b))) {
        symbols.push((
            b,
            char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER),
        ));
    }
    symbols
}

/// What a merge does: its priority (lower merges first) and the token it makes.
#[derive(Clone, Copy)]
struct Merge {
    rank: u32,
    id: u32,
}

/// A BPE model over token ids, with a per-word cache.
pub(crate) struct Bpe {
    /// Id of the token for byte `b` inside a word.
    byte_ids: [u32; 256],
    /// Id of the token for byte `b` ending a word (`…</w>`).
    byte_end_ids: [u32; 256],
    /// Merges keyed by the ids of the pair they join.
    merges: HashMap<(u32, u32), Merge>,
    /// Word -> ids, as the reference's `self.cache`.
    cache: RwLock<HashMap<String, Vec<u32>>>,
}

impl Bpe {
    /// Builds a model. `merges` lists `(left, right, merged)` ids in priority order; a pair that
    /// appears twice keeps its last rank, as in the reference's `dict(zip(merges, range(...)))`.
    pub(crate) fn new(
        byte_ids: [u32; 256],
        byte_end_ids: [u32; 256],
        merges: &[(u32, u32, u32)],
    ) -> Self {
        let mut table = HashMap::with_capacity(merges.len());
        for (rank, &(left, right, id)) in merges.iter().enumerate() {
            let rank = u32::try_from(rank).unwrap_or(u32::MAX);
            table.insert((left, right), Merge { rank, id });
        }
        Self {
            byte_ids,
            byte_end_ids,
            merges: table,
            cache: RwLock::new(HashMap::new()),
        }
    }

    /// Appends the ids of one pre-token (a word, a number or a run of symbols) to `out`.
    pub(crate) fn encode_word(&self, word: &str, out: &mut Vec<u32>) {
        {
            let cache = self
                .cache
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(ids) = cache.get(word) {
                out.extend_from_slice(ids);
                return;
            }
        }
        let ids = self.merge_word(word.as_bytes());
        out.extend_from_slice(&ids);
        if word.len() > MAX_CACHED_WORD {
            return;
        }
        let mut cache = self
            .cache
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if cache.len() >= CACHE_CAPACITY {
            cache.clear();
        }
        cache.insert(word.to_owned(), ids);
    }

    /// The reference's `bpe()`: start from one token per byte (the last one marked as ending the
    /// word) and repeatedly apply the lowest-ranked merge present, at every non-overlapping
    /// occurrence from left to right, until no merge applies.
    ///
    /// This is done with a heap and a linked list (O(n log n), so that very long words stay
    /// cheap), taking all occurrences of one rank at a time, which gives exactly the result of
    /// the reference's quadratic loop.
    fn merge_word(&self, bytes: &[u8]) -> Vec<u32> {
        let Some((&last, init)) = bytes.split_last() else {
            return Vec::new();
        };
        let mut ids: Vec<u32> = init
            .iter()
            .map(|&b| self.byte_ids[usize::from(b)])
            .collect();
        ids.push(self.byte_end_ids[usize::from(last)]);
        let n = ids.len();
        if n == 1 {
            return ids;
        }
        // Doubly linked list over positions; `alive[i]` is false once merged into its left.
        let mut next: Vec<usize> = (1..=n).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let mut alive = vec![true; n];
        let mut heap: BinaryHeap<Reverse<(u32, usize)>> = BinaryHeap::new();
        let push = |heap: &mut BinaryHeap<Reverse<(u32, usize)>>,
                    ids: &[u32],
                    left: usize,
                    right: usize| {
            if let Some(merge) = self.merges.get(&(ids[left], ids[right])) {
                heap.push(Reverse((merge.rank, left)));
            }
        };
        for i in 0..n - 1 {
            push(&mut heap, &ids, i, i + 1);
        }
        let mut batch = Vec::new();
        while let Some(Reverse((rank, first))) = heap.pop() {
            // All pending occurrences of this rank (i.e. of this one pair), left to right.
            batch.clear();
            batch.push(first);
            while let Some(&Reverse((r, pos))) = heap.peek() {
                if r != rank {
                    break;
                }
                batch.push(pos);
                heap.pop();
            }
            batch.sort_unstable();
            batch.dedup();
            for &left in &batch {
                let right = next[left];
                if !alive[left] || right >= n {
                    continue;
                }
                let Some(merge) = self.merges.get(&(ids[left], ids[right])) else {
                    continue;
                };
                if merge.rank != rank {
                    continue; // stale entry: one side has been merged since it was pushed
                }
                ids[left] = merge.id;
                alive[right] = false;
                next[left] = next[right];
                if next[left] < n {
                    prev[next[left]] = left;
                }
                if prev[left] < n {
                    push(&mut heap, &ids, prev[left], left);
                }
                if next[left] < n {
                    push(&mut heap, &ids, left, next[left]);
                }
            }
        }
        ids.iter()
            .zip(&alive)
            .filter(|(_, &a)| a)
            .map(|(&id, _)| id)
            .collect()
    }

    /// Number of words in the cache (for tests).
    #[cfg(test)]
    fn cached_words(&self) -> usize {
        self.cache.read().map(|c| c.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference algorithm, on strings, as a model to compare against.
    fn reference_bpe(word: &[&str], ranks: &HashMap<(String, String), usize>) -> Vec<String> {
        let mut word: Vec<String> = word.iter().map(|s| (*s).to_owned()).collect();
        while word.len() > 1 {
            let best = word
                .windows(2)
                .filter_map(|w| {
                    ranks
                        .get(&(w[0].clone(), w[1].clone()))
                        .map(|&r| (r, w[0].clone(), w[1].clone()))
                })
                .min();
            let Some((_, first, second)) = best else {
                break;
            };
            let mut merged = Vec::new();
            let mut i = 0;
            while i < word.len() {
                if i + 1 < word.len() && word[i] == first && word[i + 1] == second {
                    merged.push(format!("{first}{second}"));
                    i += 2;
                } else {
                    merged.push(word[i].clone());
                    i += 1;
                }
            }
            word = merged;
        }
        word
    }

    #[test]
    fn byte_symbols_are_gpt2s() {
        let symbols = byte_symbols();
        assert_eq!(symbols.len(), 256);
        assert_eq!(symbols[0], (b'!', '!'));
        assert_eq!(symbols[188], (0, '\u{100}'));
        assert_eq!(
            symbols.iter().find(|(b, _)| *b == b' ').map(|s| s.1),
            Some('\u{120}')
        );
    }

    #[test]
    fn heap_merging_matches_the_reference_loop() {
        // A small alphabet over bytes 'a'..'d' with overlapping and chained merges.
        let letters = ["a", "b", "c", "d"];
        let merges_s = [
            ("a", "a"),
            ("a", "b"),
            ("b", "c</w>"),
            ("aa", "a"),
            ("ab", "c"),
            ("c", "d"),
            ("aaa", "ab"),
            ("aa", "aa"),
            ("d", "a</w>"),
            ("b", "b"),
        ];
        let mut vocab: HashMap<String, u32> = HashMap::new();
        let mut byte_ids = [0u32; 256];
        let mut byte_end_ids = [0u32; 256];
        for l in letters {
            let id = vocab.len() as u32;
            vocab.insert(l.to_owned(), id);
            byte_ids[usize::from(l.as_bytes()[0])] = id;
            let id = vocab.len() as u32;
            vocab.insert(format!("{l}</w>"), id);
            byte_end_ids[usize::from(l.as_bytes()[0])] = id;
        }
        let mut merges = Vec::new();
        let mut ranks = HashMap::new();
        for (rank, (l, r)) in merges_s.iter().enumerate() {
            let joined = format!("{l}{r}");
            let next_id = vocab.len() as u32;
            let id = *vocab.entry(joined).or_insert(next_id);
            merges.push((vocab[*l], vocab[*r], id));
            ranks.insert(((*l).to_owned(), (*r).to_owned()), rank);
        }
        let names: HashMap<u32, String> = vocab.iter().map(|(k, v)| (*v, k.clone())).collect();
        let bpe = Bpe::new(byte_ids, byte_end_ids, &merges);
        // Every word of length 1..=7 over the alphabet.
        let mut words = vec![String::new()];
        for _ in 0..7 {
            words = words
                .iter()
                .flat_map(|w| letters.iter().map(move |l| format!("{w}{l}")))
                .collect();
            for word in &words {
                let mut symbols: Vec<String> = word.chars().map(String::from).collect();
                if let Some(last) = symbols.last_mut() {
                    last.push_str("</w>");
                }
                let symbols_ref: Vec<&str> = symbols.iter().map(String::as_str).collect();
                let expected = reference_bpe(&symbols_ref, &ranks);
                let got: Vec<String> = bpe
                    .merge_word(word.as_bytes())
                    .iter()
                    .map(|id| names[id].clone())
                    .collect();
                assert_eq!(got, expected, "{word}");
            }
        }
    }

    #[test]
    fn cache_is_bounded() {
        let bpe = Bpe::new([0; 256], [1; 256], &[]);
        let mut out = Vec::new();
        for i in 0..CACHE_CAPACITY + 10 {
            bpe.encode_word(&i.to_string(), &mut out);
        }
        assert!(bpe.cached_words() <= CACHE_CAPACITY);
        assert!(bpe.merge_word(b"").is_empty());
    }
}
