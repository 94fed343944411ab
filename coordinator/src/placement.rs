//! Storage placement for new machines (`spec/turku.md` §1.8): random, weighted by
//! `space_available`; uniform when every weight is zero.

use rand::Rng;

/// Pick a storage id from `(id, space_available)` candidates. `None` when there are none.
///
/// The original walks cumulative float probabilities and can fall off the end through
/// rounding (then crashes); here the last candidate takes any remainder.
pub fn pick_storage<'a, R: Rng + ?Sized>(
    candidates: &'a [(String, i64)],
    rng: &mut R,
) -> Option<&'a str> {
    let last = candidates.last()?;
    let total: i64 = candidates.iter().map(|(_, w)| (*w).max(0)).sum();
    if total <= 0 {
        return candidates
            .get(rng.gen_range(0..candidates.len()))
            .map(|(id, _)| id.as_str());
    }
    let mut r = rng.gen_range(0..total);
    for (id, w) in candidates {
        let w = (*w).max(0);
        if r < w {
            return Some(id);
        }
        r -= w;
    }
    Some(&last.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn weighted_by_free_space() {
        let c = vec![
            ("big".to_owned(), 900),
            ("small".to_owned(), 100),
            ("full".to_owned(), 0),
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut big = 0;
        for _ in 0..10_000 {
            match pick_storage(&c, &mut rng) {
                Some("big") => big += 1,
                Some("small") => {}
                other => panic!("unexpected pick {other:?}"),
            }
        }
        assert!((8_700..9_300).contains(&big), "{big}");
    }

    #[test]
    fn uniform_when_no_space_and_none_when_empty() {
        let c = vec![("a".to_owned(), 0), ("b".to_owned(), 0)];
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let picks: Vec<_> = (0..200)
            .filter_map(|_| pick_storage(&c, &mut rng))
            .collect();
        assert!(picks.contains(&"a") && picks.contains(&"b"));
        assert_eq!(pick_storage(&[], &mut rng), None);
    }
}
