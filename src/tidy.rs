//! Layering checks over the source text, in the spirit of TigerBeetle's
//! `tidy.zig`: what may import what is a rule of the architecture
//! (ARCHITECTURE.md), so a change that breaks it fails a test instead of
//! waiting for a reviewer.
//!
//! The checks read `src/` as text. Comment lines are skipped, so a doc
//! comment may name any module.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Library files that may still use `anyhow`: none. An entry here is a
/// debt with a reason, removed as soon as its file is clean.
const ANYHOW_ALLOWED: &[&str] = &[];

/// Every `.rs` file under `src/`, as (path relative to the crate, text).
fn sources() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    let mut dirs = vec![root.join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src/") {
            let path: PathBuf = entry.expect("dir entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("read a source file");
                let rel = path.strip_prefix(root).expect("under the crate");
                files.push((rel.to_string_lossy().replace('\\', "/"), text));
            }
        }
    }
    assert!(files.len() > 20, "found only {} source files", files.len());
    files.sort();
    files
}

/// The file's lines that are code, not comments.
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.trim_start().starts_with("//"))
}

/// Each line of `text` that names any of `needles` in code.
fn offending(path: &str, text: &str, needles: &[&str]) -> Vec<String> {
    code_lines(text)
        .filter(|(_, l)| needles.iter().any(|n| l.contains(n)))
        .map(|(n, l)| format!("{path}:{n}: {}", l.trim()))
        .collect()
}

fn is_binary(path: &str) -> bool {
    path == "src/main.rs" || path.starts_with("src/cli/")
}

#[test]
fn state_and_storage_import_no_outer_layer() {
    let mut bad = Vec::new();
    for (path, text) in sources() {
        if path.starts_with("src/state/") || path.starts_with("src/storage") {
            let outer = ["crate::server", "crate::client", "crate::audit"];
            bad.extend(offending(&path, &text, &outer));
        }
    }
    assert!(
        bad.is_empty(),
        "the state machine and storage must not depend on server, client or audit:\n{}",
        bad.join("\n")
    );
}

#[test]
fn library_has_no_anyhow() {
    let mut bad = Vec::new();
    for (path, text) in sources() {
        // This file names the crate to look for it.
        let exempt = path == "src/tidy.rs" || ANYHOW_ALLOWED.contains(&path.as_str());
        if is_binary(&path) || exempt {
            continue;
        }
        bad.extend(offending(&path, &text, &["anyhow"]));
    }
    assert!(
        bad.is_empty(),
        "library errors are thiserror enums; anyhow belongs to the binaries:\n{}",
        bad.join("\n")
    );
}

#[test]
fn server_and_client_do_not_import_each_other() {
    let mut bad = Vec::new();
    for (path, text) in sources() {
        if path.starts_with("src/server/") {
            bad.extend(offending(&path, &text, &["crate::client"]));
        }
        if path == "src/client.rs" {
            bad.extend(offending(&path, &text, &["crate::server"]));
        }
    }
    assert!(
        bad.is_empty(),
        "server and client share code through their own modules (e.g. crate::tls):\n{}",
        bad.join("\n")
    );
}

#[test]
fn server_modules_have_no_import_cycle() {
    // Edges: a server module naming `super::<sibling>` in code. The parent
    // (`mod.rs`, which declares them all) is not part of the graph.
    let files = sources();
    let modules: BTreeSet<String> = files
        .iter()
        .filter_map(|(p, _)| p.strip_prefix("src/server/")?.strip_suffix(".rs"))
        .filter(|m| *m != "mod")
        .map(str::to_string)
        .collect();
    let mut edges: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (path, text) in &files {
        let Some(from) = path
            .strip_prefix("src/server/")
            .and_then(|p| p.strip_suffix(".rs"))
            .filter(|m| modules.contains(*m))
        else {
            continue;
        };
        let deps = edges.entry(from).or_default();
        for (_, line) in code_lines(text) {
            for to in &modules {
                let named = [format!("super::{to}::"), format!("super::{to}::{{")]
                    .iter()
                    .any(|n| line.contains(n.as_str()))
                    || line.contains(&format!("super::{{{to}"))
                    || line.contains(&format!("super::{to};"));
                if named && to != from {
                    deps.insert(to);
                }
            }
        }
    }
    // The reading of imports works: the read loop's known imports are seen.
    let connection = edges.get("connection").expect("server/connection.rs");
    assert!(connection.contains("reply") && connection.contains("sign_on"));
    for start in edges.keys() {
        if let Some(cycle) = cycle_from(start, &edges) {
            panic!("server modules import each other: {}", cycle.join(" -> "));
        }
    }
}

/// A path from `start` back to itself, if there is one.
fn cycle_from<'a>(
    start: &'a str,
    edges: &BTreeMap<&'a str, BTreeSet<&'a str>>,
) -> Option<Vec<&'a str>> {
    let mut stack = vec![(start, vec![start])];
    let mut seen = BTreeSet::new();
    while let Some((at, path)) = stack.pop() {
        for &next in edges.get(at).into_iter().flatten() {
            if next == start {
                let mut cycle = path.clone();
                cycle.push(start);
                return Some(cycle);
            }
            if seen.insert(next) {
                let mut longer = path.clone();
                longer.push(next);
                stack.push((next, longer));
            }
        }
    }
    None
}

#[test]
fn the_cycle_finder_finds_a_cycle() {
    let edges: BTreeMap<&str, BTreeSet<&str>> = [
        ("writer", ["reply"].into()),
        ("connection", ["writer", "reply"].into()),
        ("reply", ["connection"].into()),
    ]
    .into();
    assert_eq!(
        cycle_from("writer", &edges),
        Some(vec!["writer", "reply", "connection", "writer"])
    );
    let acyclic: BTreeMap<&str, BTreeSet<&str>> = [
        ("connection", ["writer"].into()),
        ("writer", ["reply"].into()),
    ]
    .into();
    assert_eq!(cycle_from("connection", &acyclic), None);
}
