//! FilterSet expansion (`spec/turku.md` §1.6): `merge NAME` / `. NAME` rules are replaced by
//! the rules of the active FilterSet `NAME`; a fixed list of verbs is kept; everything else,
//! and every rule without a space, is dropped.
//!
//! The original's "already loaded" list has a quirk that is kept for identical output: a
//! callee handed an *empty* list starts its own (Python's `if not loaded_sets`), so what it
//! loads is not seen by its caller. What is not kept (B8): a FilterSet that merges itself,
//! directly or through others, recursed until Python's stack overflowed (500); here a set
//! already being expanded is skipped.

/// Verbs passed through verbatim.
const KEPT_VERBS: [&str; 16] = [
    "dir-merge",
    ":",
    "clear",
    "!",
    "exclude",
    "-",
    "include",
    "+",
    "hide",
    "H",
    "show",
    "S",
    "protect",
    "P",
    "risk",
    "R",
];
/// Expansion depth bound (a chain this long is a configuration error, not a real need).
const MAX_DEPTH: usize = 64;
/// Output bound, against sets that fan out combinatorially.
const MAX_RULES: usize = 10_000;

/// Expand `rules`, looking FilterSets up with `lookup(name)` (active sets only).
pub fn build_filters<F>(rules: &[String], lookup: &mut F) -> Vec<String>
where
    F: FnMut(&str) -> Option<Vec<String>>,
{
    let mut out = Vec::new();
    let mut loaded = Vec::new();
    let mut stack = Vec::new();
    expand(rules, &mut loaded, &mut stack, lookup, &mut out);
    out
}

fn expand<F>(
    rules: &[String],
    loaded_in: &mut Vec<String>,
    stack: &mut Vec<String>,
    lookup: &mut F,
    out: &mut Vec<String>,
) where
    F: FnMut(&str) -> Option<Vec<String>>,
{
    let mut fresh = Vec::new();
    let loaded = if loaded_in.is_empty() {
        &mut fresh
    } else {
        loaded_in
    };
    for rule in rules {
        if out.len() >= MAX_RULES {
            return;
        }
        let Some((verb, arg)) = rule.split_once(' ') else {
            continue;
        };
        if verb == "merge" || verb == "." {
            if loaded.iter().any(|l| l == arg)
                || stack.iter().any(|s| s == arg)
                || stack.len() >= MAX_DEPTH
            {
                continue;
            }
            let Some(sub) = lookup(arg) else { continue };
            stack.push(arg.to_owned());
            expand(&sub, loaded, stack, lookup, out);
            stack.pop();
            loaded.push(arg.to_owned());
        } else if KEPT_VERBS.contains(&verb) {
            out.push(rule.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn run(rules: &[&str], sets: &[(&str, &[&str])]) -> Vec<String> {
        let map: HashMap<String, Vec<String>> = sets
            .iter()
            .map(|(n, r)| ((*n).to_owned(), r.iter().map(|s| (*s).to_owned()).collect()))
            .collect();
        let rules: Vec<String> = rules.iter().map(|s| (*s).to_owned()).collect();
        build_filters(&rules, &mut |name: &str| map.get(name).cloned())
    }

    #[test]
    fn verbs_kept_and_dropped() {
        let out = run(
            &[
                "- *.tmp",
                "+ /etc",
                "clear",
                "!",
                "-/ x",
                "+! y",
                ":n- .f",
                "dir-merge .rsync",
                "P keep",
                "bogus z",
            ],
            &[],
        );
        assert_eq!(out, ["- *.tmp", "+ /etc", "dir-merge .rsync", "P keep"]);
    }

    #[test]
    fn merges_expand_and_unknown_sets_vanish() {
        let out = run(
            &["merge common", ". missing", "- last"],
            &[("common", &["- *.o", "merge inner"]), ("inner", &["+ x"])],
        );
        assert_eq!(out, ["- *.o", "+ x", "- last"]);
    }

    #[test]
    fn a_set_is_expanded_once_per_level() {
        let out = run(&["merge a", "merge a"], &[("a", &["- 1"])]);
        assert_eq!(out, ["- 1"]);
    }

    /// B8: self-reference and cycles terminate.
    #[test]
    fn cycles_terminate() {
        let out = run(
            &["merge a"],
            &[
                ("a", &["- a", "merge a", "merge b"]),
                ("b", &["- b", "merge a"]),
            ],
        );
        assert_eq!(out, ["- a", "- b"]);
    }
}
