//! The module graph of every crate in the workspace has no circles: no module imports (through
//! `crate::` or `super::` paths) a module that imports it back, directly or round about. Test
//! modules are left out (a test may use its neighbours freely).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module as its path inside its crate (`["engine", "pack"]`); the crate root is empty.
type Module = Vec<String>;

/// The crates' source folders, relative to the workspace root.
const CRATES: [&str; 4] = ["src", "server/src", "client/src", "experiments/src"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module a file defines.
fn module_of(root: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(root).unwrap().with_extension("");
    let mut parts: Module = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    // A folder's `mod.rs` (or the crate root) is the folder's module.
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The longest prefix of `path` that names a module of the crate.
fn resolve(path: &[String], modules: &BTreeSet<Module>) -> Option<Module> {
    (0..=path.len())
        .rev()
        .map(|k| path[..k].to_vec())
        .find(|m| modules.contains(m))
}

/// The source without comments and without its `#[cfg(test)]` tail.
fn code_of(text: &str) -> String {
    let body = text.split("#[cfg(test)]").next().unwrap_or("");
    body.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `crate::a::b` and `super::...::a` path in `code`, as its head and the names after it.
fn paths(code: &str) -> Vec<(String, Vec<String>)> {
    let bytes = code.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let starts = (i == 0 || !word(bytes[i - 1]))
            && (bytes[i..].starts_with(b"crate::") || bytes[i..].starts_with(b"super::"));
        if !starts {
            i += 1;
            continue;
        }
        let end = (i..bytes.len())
            .find(|&j| !(word(bytes[j]) || bytes[j] == b':'))
            .unwrap_or(bytes.len());
        let segments: Vec<String> = code[i..end]
            .split("::")
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        let supers = segments.iter().take_while(|s| *s == "super").count();
        let head = if supers > 0 {
            format!("super{supers}")
        } else {
            "crate".to_string()
        };
        let skip = if supers > 0 { supers } else { 1 };
        found.push((head, segments[skip..].to_vec()));
        i = end;
    }
    found
}

/// The import edges between the modules of one crate.
fn graph(root: &Path) -> BTreeMap<Module, BTreeSet<Module>> {
    let mut files = Vec::new();
    rust_files(root, &mut files);
    let modules: BTreeSet<Module> = files.iter().map(|f| module_of(root, f)).collect();
    let mut edges = BTreeMap::new();
    for file in &files {
        let module = module_of(root, file);
        let code = code_of(&std::fs::read_to_string(file).unwrap());
        let mut targets = BTreeSet::new();
        for (head, rest) in paths(&code) {
            // Each `super` is one module up.
            let base: Module = match head.strip_prefix("super") {
                Some(n) => {
                    let up: usize = n.parse().unwrap();
                    module[..module.len().saturating_sub(up)].to_vec()
                }
                None => Vec::new(),
            };
            let full: Module = base.into_iter().chain(rest).collect();
            if let Some(target) = resolve(&full, &modules) {
                if target != module {
                    targets.insert(target);
                }
            }
        }
        edges.insert(module, targets);
    }
    edges
}

/// The edges between sibling modules that the import edges make: an import from anywhere in
/// `a`'s subtree into `b`'s (siblings under one parent) is an edge `a -> b` under that parent.
/// Imports between a module and its own ancestors or descendants are not edges (a folder's
/// module and its files are one idea).
fn sibling_edges(
    edges: &BTreeMap<Module, BTreeSet<Module>>,
) -> BTreeMap<Module, BTreeMap<String, BTreeSet<String>>> {
    let mut out: BTreeMap<Module, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (from, targets) in edges {
        for to in targets {
            let common = from.iter().zip(to).take_while(|(a, b)| a == b).count();
            if common == from.len() || common == to.len() {
                continue;
            }
            out.entry(from[..common].to_vec())
                .or_default()
                .entry(from[common].clone())
                .or_default()
                .insert(to[common].clone());
        }
    }
    out
}

/// A circle through `start` among siblings, if there is one.
fn circle_from(start: &str, edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    let mut stack = vec![(start.to_string(), vec![start.to_string()])];
    let mut seen = BTreeSet::new();
    while let Some((at, trail)) = stack.pop() {
        for next in edges.get(&at).into_iter().flatten() {
            if next == start {
                return Some(trail.clone());
            }
            if seen.insert(next.clone()) {
                let mut longer = trail.clone();
                longer.push(next.clone());
                stack.push((next.clone(), longer));
            }
        }
    }
    None
}

/// Every circle in the crate at `root`, one line each.
fn circles(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for (parent, edges) in sibling_edges(&graph(root)) {
        for module in edges.keys() {
            if let Some(circle) = circle_from(module, &edges) {
                let prefix = parent.join("::");
                found.push(format!("under `{prefix}`: {} -> back", circle.join(" -> ")));
            }
        }
    }
    found
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut all = Vec::new();
    for krate in CRATES {
        let root = workspace.join(krate);
        assert!(graph(&root).len() > 3, "{krate}: too few modules found");
        all.extend(circles(&root).into_iter().map(|c| format!("{krate}: {c}")));
    }
    assert!(all.is_empty(), "import circles:\n{}", all.join("\n"));
}

#[test]
fn the_parser_sees_a_circle_when_there_is_one() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("a")).unwrap();
    std::fs::write(root.join("lib.rs"), "pub mod a;\npub mod b;\npub mod c;\n").unwrap();
    std::fs::write(
        root.join("a/mod.rs"),
        "pub mod inner;\nuse self::inner::f;\n",
    )
    .unwrap();
    std::fs::write(
        root.join("a/inner.rs"),
        "use super::Thing; // a comment naming crate::c\nuse crate::c::C;\n",
    )
    .unwrap();
    std::fs::write(
        root.join("b.rs"),
        "pub struct Thing;\nfn f() { super::a::inner::g() }\n#[cfg(test)]\nmod tests { use crate::c; }\n",
    )
    .unwrap();
    std::fs::write(root.join("c.rs"), "pub struct C;\n").unwrap();
    let edges = graph(root);
    let (a, inner, b, c) = (
        vec!["a".to_string()],
        vec!["a".to_string(), "inner".to_string()],
        vec!["b".to_string()],
        vec!["c".to_string()],
    );
    // Comments and test modules do not count; a file's `super` is its folder's module.
    assert_eq!(edges[&inner], BTreeSet::from([a.clone(), c.clone()]));
    assert_eq!(edges[&b], BTreeSet::from([inner.clone()]));
    // A child and its parent are one idea; siblings are not.
    assert!(circles(root).is_empty());
    std::fs::write(root.join("c.rs"), "pub struct C;\nuse crate::b::Thing;\n").unwrap();
    // a::inner -> c -> b -> a::inner: a circle among the root's children a, b and c.
    let found = circles(root);
    assert!(!found.is_empty());
    assert!(found[0].contains("under ``"), "{found:?}");
}
