//! DESIGN.md §1 allows crate dependencies in a few directions only. This test reads
//! `cargo metadata` and fails when a workspace crate depends on a workspace crate it must not,
//! or when a new crate appears that the table below does not place.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::process::Command;

/// Crate folder → the workspace crate folders its normal and build dependencies may name.
/// `None`: anything (test, bench and fuzz harnesses).
const ALLOWED: &[(&str, Option<&[&str]>)] = &[
    ("api", Some(&[])),
    ("store", Some(&[])),
    ("proto-rsync", Some(&[])),
    ("coordinator", Some(&["api"])),
    ("agent", Some(&["api"])),
    ("sshd", Some(&["api", "proto-rsync", "store"])),
    ("tests", None),
    ("benches", None),
    ("fuzz", None),
];

/// Dev-dependencies may add the shared test fixtures and nothing else of ours.
const DEV_ALLOWED: &[&str] = &["tests"];

#[derive(Debug)]
struct Edge {
    from: String,
    to: String,
    kind: String,
}

/// (crate folder, dependency edges onto other workspace crates) for every workspace member.
fn workspace_edges() -> (Vec<String>, Vec<Edge>) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(root)
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let root = std::fs::canonicalize(root).unwrap();
    let folder_of = |manifest: &str| -> String {
        let dir = std::path::Path::new(manifest).parent().unwrap();
        dir.strip_prefix(&root)
            .unwrap_or_else(|_| panic!("{manifest} is outside the workspace"))
            .to_string_lossy()
            .into_owned()
    };
    let packages = meta["packages"].as_array().unwrap();
    let mut folder_by_name = BTreeMap::new();
    for p in packages {
        folder_by_name.insert(
            p["name"].as_str().unwrap().to_string(),
            folder_of(p["manifest_path"].as_str().unwrap()),
        );
    }
    let mut edges = Vec::new();
    for p in packages {
        let from = folder_of(p["manifest_path"].as_str().unwrap());
        for d in p["dependencies"].as_array().unwrap() {
            let name = d["name"].as_str().unwrap();
            if let Some(to) = folder_by_name.get(name) {
                edges.push(Edge {
                    from: from.clone(),
                    to: to.clone(),
                    kind: d["kind"].as_str().unwrap_or("normal").to_string(),
                });
            }
        }
    }
    (folder_by_name.into_values().collect(), edges)
}

fn violations(folders: &[String], edges: &[Edge]) -> Vec<String> {
    let rules: BTreeMap<&str, Option<&[&str]>> = ALLOWED.iter().copied().collect();
    let mut bad = Vec::new();
    for f in folders {
        if !rules.contains_key(f.as_str()) {
            bad.push(format!(
                "crate folder `{f}` has no place in DESIGN.md §1's dependency rules"
            ));
        }
    }
    for e in edges {
        let Some(allowed) = rules.get(e.from.as_str()).copied() else {
            continue;
        };
        let ok = match (allowed, e.kind.as_str()) {
            (None, _) => true,
            (Some(_), "dev") => DEV_ALLOWED.contains(&e.to.as_str()),
            (Some(list), _) => list.contains(&e.to.as_str()),
        };
        if !ok {
            bad.push(format!("{} ─► {} ({} dependency)", e.from, e.to, e.kind));
        }
    }
    bad
}

#[test]
fn crates_depend_only_in_the_directions_the_design_allows() {
    let (folders, edges) = workspace_edges();
    assert!(
        folders.iter().any(|f| f == "sshd") && edges.iter().any(|e| e.from == "sshd"),
        "cargo metadata showed no workspace edges: {folders:?}"
    );
    let bad = violations(&folders, &edges);
    assert!(bad.is_empty(), "forbidden dependencies:\n{}", bad.join("\n"));
}

#[test]
fn the_check_catches_a_leaf_depending_on_a_leaf_and_an_unplaced_crate() {
    let folders = vec!["store".to_string(), "newcrate".to_string()];
    let edges = vec![
        Edge {
            from: "store".into(),
            to: "proto-rsync".into(),
            kind: "normal".into(),
        },
        Edge {
            from: "coordinator".into(),
            to: "store".into(),
            kind: "build".into(),
        },
        Edge {
            from: "store".into(),
            to: "tests".into(),
            kind: "dev".into(),
        },
    ];
    let bad = violations(&folders, &edges);
    assert_eq!(bad.len(), 3, "{bad:#?}");
    assert!(bad[0].contains("newcrate"));
    assert!(bad[1].contains("store ─► proto-rsync"));
    assert!(bad[2].contains("coordinator ─► store"));
}
