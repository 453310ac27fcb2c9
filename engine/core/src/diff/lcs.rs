//! Longest common subsequences, as the anchors that array diffs are laid out around.

/// Above this many table cells (after trimming the common prefix and suffix), the middle of
/// two arrays is shown as all removed then all added rather than aligned: a 2000×2000
/// array still aligns, and memory stays bounded.
const MAX_CELLS: usize = 4_000_000;

/// Pairs `(old index, new index)` of a longest common subsequence of two sequences of
/// lengths `n` and `m`, increasing in both; `eq(i, j)` compares old item `i` with new item
/// `j`. Deterministic: when several exist, removals are preferred before additions.
pub(super) fn common(n: usize, m: usize, eq: impl Fn(usize, usize) -> bool) -> Vec<(usize, usize)> {
    let mut prefix = 0;
    while prefix < n && prefix < m && eq(prefix, prefix) {
        prefix += 1;
    }
    let mut suffix = 0;
    while suffix < n - prefix && suffix < m - prefix && eq(n - 1 - suffix, m - 1 - suffix) {
        suffix += 1;
    }
    let (a, b) = (n - prefix - suffix, m - prefix - suffix);
    let mut pairs: Vec<(usize, usize)> = (0..prefix).map(|i| (i, i)).collect();
    if a > 0 && b > 0 && a.saturating_mul(b) <= MAX_CELLS {
        // table[i][j]: length of the LCS of old[prefix + i..] and new[prefix + j..].
        let width = b + 1;
        let mut table = vec![0u32; (a + 1) * width];
        for i in (0..a).rev() {
            for j in (0..b).rev() {
                table[i * width + j] = if eq(prefix + i, prefix + j) {
                    table[(i + 1) * width + j + 1] + 1
                } else {
                    table[(i + 1) * width + j].max(table[i * width + j + 1])
                };
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < a && j < b {
            if eq(prefix + i, prefix + j) {
                pairs.push((prefix + i, prefix + j));
                i += 1;
                j += 1;
            } else if table[(i + 1) * width + j] >= table[i * width + j + 1] {
                i += 1;
            } else {
                j += 1;
            }
        }
    }
    pairs.extend((0..suffix).map(|k| (n - suffix + k, m - suffix + k)));
    pairs
}

/// For sequences whose items are unique (matched by identity): `old_of_new[j]` is the old
/// index of new item `j`, if it has one. Returns the pairs of a longest run whose old
/// indexes increase in new order, which is the longest common subsequence (O(n log n)).
pub(super) fn increasing(old_of_new: &[Option<usize>]) -> Vec<(usize, usize)> {
    // tails[k]: the new index ending the best run of length k + 1 found so far.
    let mut tails: Vec<usize> = Vec::new();
    let mut previous: Vec<Option<usize>> = vec![None; old_of_new.len()];
    for (j, old) in old_of_new.iter().enumerate() {
        let Some(old) = *old else { continue };
        let k = tails.partition_point(|&t| old_of_new[t].is_some_and(|o| o < old));
        if k > 0 {
            previous[j] = Some(tails[k - 1]);
        }
        if k == tails.len() {
            tails.push(j);
        } else {
            tails[k] = j;
        }
    }
    let mut pairs = Vec::with_capacity(tails.len());
    let mut cursor = tails.last().copied();
    while let Some(j) = cursor {
        if let Some(old) = old_of_new[j] {
            pairs.push((old, j));
        }
        cursor = previous[j];
    }
    pairs.reverse();
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcs(a: &str, b: &str) -> String {
        let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
        common(a.len(), b.len(), |i, j| a[i] == b[j])
            .into_iter()
            .map(|(i, _)| a[i])
            .collect()
    }

    #[test]
    fn common_subsequences() {
        assert_eq!(lcs("abcde", "abxde"), "abde");
        assert_eq!(lcs("ab", "ba").len(), 1);
        assert_eq!(lcs("", "abc"), "");
        assert_eq!(lcs("axbycz", "abc"), "abc");
        assert_eq!(lcs("same", "same"), "same");
    }

    #[test]
    fn increasing_runs() {
        // new order c, a, b of old a(0), b(1), c(2): a and b stay, c moved.
        assert_eq!(increasing(&[Some(2), Some(0), Some(1)]), [(0, 1), (1, 2)]);
        assert_eq!(
            increasing(&[None, Some(0), None, Some(1)]),
            [(0, 1), (1, 3)]
        );
        assert_eq!(increasing(&[]), []);
    }
}
