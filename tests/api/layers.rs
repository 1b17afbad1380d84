//! The module graph has no cycles: read from the sources, each module's `crate::` and
//! `super::` paths are its imports; a cycle among the top-level modules, or among the files of
//! one folder module (`store::writer` and `store::prune`), fails with the modules in it. Tests
//! (`tests.rs`, `mod tests`) and comments are left out: they may reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A file's module: `["store", "writer"]` for `src/store/writer.rs`, `["store"]` for
/// `src/store/mod.rs`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

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

/// The code of a file without its comments and its test module.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests {") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The identifiers after each `prefix` in `code`: `crate::store::Store` gives `store`, then
/// `Store`.
fn paths_after<'a>(code: &'a str, prefix: &str) -> Vec<(&'a str, Option<&'a str>)> {
    let ident = |s: &'a str| {
        let end = s
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(s.len());
        &s[..end]
    };
    code.match_indices(prefix)
        .map(|(at, _)| {
            let rest = &code[at + prefix.len()..];
            let first = ident(rest);
            let second = rest[first.len()..].strip_prefix("::").map(ident);
            (first, second)
        })
        .collect()
}

/// The files of each folder module and the files they import: `folder -> file -> files`.
type Inner = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

fn link(inner: &mut Inner, folder: &str, from: &str, to: &str) {
    inner
        .entry(folder.to_string())
        .or_default()
        .entry(from.to_string())
        .or_default()
        .insert(to.to_string());
}

/// A cycle in `graph`, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let folders: BTreeSet<String> = files
        .iter()
        .map(|f| module_of(&src, f))
        .filter(|m| m.len() > 1)
        .map(|m| m[0].clone())
        .collect();
    let is_file_of = |folder: &str, name: &str| {
        src.join(folder).join(format!("{name}.rs")).exists()
            || src.join(folder).join(name).join("mod.rs").exists()
    };
    let mut top: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut inner: Inner = BTreeMap::new();
    for file in &files {
        let module = module_of(&src, file);
        if module.is_empty()
            || module.last().is_some_and(|m| m == "tests")
            || ["main", "lib", "fuzzing"].contains(&module[0].as_str())
        {
            continue;
        }
        let code = code(&std::fs::read_to_string(file).unwrap());
        let me = module[0].clone();
        let me_inner = module.get(1).cloned().unwrap_or_default();
        for (target, then) in paths_after(&code, "crate::") {
            if target != me && !target.is_empty() {
                top.entry(me.clone())
                    .or_default()
                    .insert(target.to_string());
            } else if target == me
                && folders.contains(&me)
                && let Some(sub) = then.filter(|s| is_file_of(&me, s))
                && sub != me_inner
            {
                link(&mut inner, &me, &me_inner, sub);
            }
        }
        if module.len() == 2 {
            for (sibling, _) in paths_after(&code, "super::") {
                if is_file_of(&me, sibling) && sibling != me_inner {
                    link(&mut inner, &me, &me_inner, sibling);
                }
            }
        }
    }
    assert!(
        top.len() > 10,
        "the modules were read: {:?}",
        top.keys().collect::<Vec<_>>()
    );
    if let Some(cycle) = find_cycle(&top) {
        panic!(
            "modules import each other in a loop: {}",
            cycle.join(" -> ")
        );
    }
    for (folder, graph) in &inner {
        // The folder's `mod.rs` (the empty name) declares its files: only the files' loops
        // among themselves count.
        let files: BTreeMap<String, BTreeSet<String>> = graph
            .iter()
            .filter(|(from, _)| !from.is_empty())
            .map(|(from, to)| (from.clone(), to.clone()))
            .collect();
        if let Some(cycle) = find_cycle(&files) {
            panic!(
                "the files of `{folder}` import each other in a loop: {}",
                cycle.join(" -> ")
            );
        }
    }
}
