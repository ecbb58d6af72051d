//! The layout's rules (lib.rs, "Layout"), checked on the source: no two top-level
//! modules import each other, directly or round a circle, and the named directions hold
//! (the event store knows nothing of projections, the projector nothing of the matcher).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module → the top-level modules its code (not its comments, not its unit
/// tests) names as `crate::…`.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let relative = path.strip_prefix(&src).unwrap();
            let top = relative
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_str()
                .unwrap()
                .trim_end_matches(".rs")
                .to_string();
            if top == "lib" || top == "main" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]\nmod tests").next().unwrap();
            let names = graph.entry(top.clone()).or_default();
            for line in code.lines() {
                let line = line.split("//").next().unwrap();
                for (at, _) in line.match_indices("crate::") {
                    names.extend(module_named(&line[at + "crate::".len()..]));
                }
                // `use crate::{a::X, b::{Y, Z}}`: the first segment of each path.
                if let Some(list) = line.trim_start().strip_prefix("use crate::{") {
                    for part in list.split(',') {
                        let part = part.trim_start_matches(['{', ' ']);
                        if part.contains("::") {
                            names.extend(module_named(part));
                        }
                    }
                }
            }
            names.remove(&top);
        }
    }
    graph
}

fn module_named(path: &str) -> Option<String> {
    let name: String = path
        .chars()
        .take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit())
        .collect();
    (!name.is_empty()).then_some(name)
}

/// A circle through `from`, if there is one: the path back to it.
fn circle_through(graph: &BTreeMap<String, BTreeSet<String>>, from: &str) -> Option<Vec<String>> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![vec![from.to_string()]];
    while let Some(path) = stack.pop() {
        let last = path.last().unwrap();
        for next in graph.get(last).into_iter().flatten() {
            if next == from {
                let mut circle = path.clone();
                circle.push(next.clone());
                return Some(circle);
            }
            if seen.insert(next.clone()) {
                let mut longer = path.clone();
                longer.push(next.clone());
                stack.push(longer);
            }
        }
    }
    None
}

#[test]
fn no_two_modules_import_each_other_round_a_circle() {
    let graph = imports();
    assert!(graph.len() > 20, "the walk saw the source: {graph:?}");
    let circles: Vec<String> = graph
        .keys()
        .filter_map(|m| circle_through(&graph, m))
        .map(|c| c.join(" → "))
        .collect();
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles.join("\n")
    );
}

#[test]
fn the_event_store_knows_no_projection_and_the_projector_no_matcher() {
    let graph = imports();
    for (module, forbidden) in [
        ("event_store", "projections"),
        ("event_store", "projector"),
        ("projector", "matcher"),
        ("domain", "graphql"),
        ("domain", "event_store"),
    ] {
        assert!(
            !graph[module].contains(forbidden),
            "{module} imports {forbidden}"
        );
    }
}
