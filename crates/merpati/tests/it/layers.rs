//! The direction of dependencies, as ARCHITECTURE.md states it: between the crates (what
//! each may depend on of ours; the compiler holds what is declared) and between the
//! server's top-level modules (no circle; the kit and the settings below the features, the
//! features below the app). Read from the sources, so an import against the direction fails
//! here rather than in review.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn crates_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crates/")
        .to_path_buf()
}

/// Our crates each crate's manifest depends on (normal dependencies only).
fn our_dependencies(manifest: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(manifest).unwrap();
    let mut deps = BTreeSet::new();
    let mut in_deps = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if in_deps && line.starts_with("merpati") {
            deps.insert(line.split(['.', ' ', '=']).next().unwrap().to_string());
        }
    }
    deps
}

#[test]
fn crates_depend_only_downward() {
    let allowed: BTreeMap<&str, &[&str]> = [
        ("merpati-webhooks", &[][..]),
        // The engines' webhooks, pure like the documents' formats.
        ("merpati-engines", &[][..]),
        // Secrets at rest: the AEAD and the key file, beside the domain.
        ("merpati-keyring", &[][..]),
        ("merpati-domain", &["merpati-webhooks"][..]),
        (
            "merpati-sqlite",
            &["merpati-domain", "merpati-keyring", "merpati-webhooks"][..],
        ),
        (
            "merpati-postgres",
            &["merpati-domain", "merpati-keyring", "merpati-webhooks"][..],
        ),
        (
            "merpati-runtime",
            &["merpati-domain", "merpati-engines", "merpati-webhooks"][..],
        ),
        // Written against the storage traits; each backend runs it in its own tests.
        (
            "merpati-store-contract",
            &["merpati-domain", "merpati-webhooks"][..],
        ),
        // The benchmarks drive a merpati from outside, through its API only.
        ("merpati-bench", &[][..]),
        (
            "merpati",
            &[
                "merpati-bench",
                "merpati-domain",
                "merpati-engines",
                "merpati-keyring",
                "merpati-runtime",
                "merpati-sqlite",
                "merpati-postgres",
                "merpati-webhooks",
            ][..],
        ),
    ]
    .into_iter()
    .collect();
    let mut seen = BTreeSet::new();
    for entry in std::fs::read_dir(crates_dir()).unwrap() {
        let dir = entry.unwrap().path();
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let Some(allowed) = allowed.get(name.as_str()) else {
            panic!("crate {name} has no place in the layers; add it here and to ARCHITECTURE.md");
        };
        let deps = our_dependencies(&dir.join("Cargo.toml"));
        let wrong: Vec<_> = deps
            .iter()
            .filter(|d| !allowed.contains(&d.as_str()))
            .collect();
        assert!(wrong.is_empty(), "{name} depends on {wrong:?}");
        seen.insert(name);
    }
    assert_eq!(seen.len(), allowed.len(), "a crate is gone: {seen:?}");
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// A file's lines up to the module of its tests, which closes a file.
fn code_of(text: &str) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().collect();
    let end = lines
        .windows(2)
        .position(|w| w[0].trim() == "#[cfg(test)]" && w[1].starts_with("mod tests"))
        .unwrap_or(lines.len());
    lines[..end].to_vec()
}

/// Modules a crate's root declares for its tests only (`#[cfg(test)] mod x;`).
fn test_only_modules(src: &Path) -> BTreeSet<String> {
    let Ok(root) = std::fs::read_to_string(src.join("lib.rs")) else {
        return BTreeSet::new();
    };
    let lines: Vec<&str> = root.lines().map(str::trim).collect();
    lines
        .windows(2)
        .filter(|w| w[0] == "#[cfg(test)]")
        .filter_map(|w| w[1].strip_prefix("mod ")?.strip_suffix(';'))
        .map(str::to_string)
        .collect()
}

/// The top-level modules of a crate's `src/` each one uses (`crate::x`, also in
/// `use crate::{x, y}`), from their code, not their tests or comments.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    sources(src, &mut files);
    let tests_only = test_only_modules(src);
    let module_of = |file: &Path| {
        let relative = file.strip_prefix(src).unwrap();
        let first = relative.iter().next().unwrap().to_string_lossy();
        first.trim_end_matches(".rs").to_string()
    };
    let modules: BTreeSet<String> = files
        .iter()
        .map(|f| module_of(f))
        .filter(|m| m != "lib" && m != "main" && !tests_only.contains(m))
        .collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let module = module_of(file);
        if !modules.contains(&module) {
            continue;
        }
        // Code only: a module's tests (at the end of its files) may use anything, and a
        // comment naming a module is no dependency on it.
        let text = std::fs::read_to_string(file).unwrap();
        let text: String = code_of(&text)
            .iter()
            .filter(|line| !line.trim_start().starts_with("//"))
            .copied()
            .collect::<Vec<_>>()
            .join("\n");
        let uses = graph.entry(module.clone()).or_default();
        let mut note = |path: &str| {
            let first = path
                .trim_start_matches(['{', ' ', '\n'])
                .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .next()
                .unwrap_or("");
            if first != module && modules.contains(first) {
                uses.insert(first.to_string());
            }
        };
        for (i, _) in text.match_indices("crate::") {
            let rest = &text[i + "crate::".len()..];
            match rest.strip_prefix('{') {
                Some(group) => {
                    let group = &group[..group.find('}').unwrap_or(group.len())];
                    for item in group.split(',') {
                        note(item.trim());
                    }
                }
                None => note(rest),
            }
        }
    }
    graph
}

/// A circle among the modules, if there is one.
fn circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut found = path[start..].to_vec();
            found.push(node.to_string());
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, graph, path, done) {
                return Some(found);
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
fn no_crate_s_top_level_modules_form_a_circle() {
    for entry in std::fs::read_dir(crates_dir()).unwrap() {
        let src = entry.unwrap().path().join("src");
        let graph = module_graph(&src);
        assert_eq!(circle(&graph), None, "in {}: {graph:?}", src.display());
    }
}

#[test]
fn the_server_s_modules_point_one_way() {
    // Lower layers first; a module may use its own layer's (without a circle) and lower ones.
    let layers: &[&[&str]] = &[
        &["config"],
        &["api"],
        &[
            "accounts",
            "alerts",
            "connectors",
            "devices",
            "endpoints",
            "events",
            "ingest",
            "jobs",
            "presence",
            "stream",
            "audit",
            "cluster",
        ],
        &["dashboard"],
        &["app", "serve", "tls", "store", "remote", "cli"],
    ];
    let layer_of = |m: &str| layers.iter().position(|l| l.contains(&m));
    let graph = module_graph(&crates_dir().join("merpati/src"));
    for (module, uses) in &graph {
        let Some(own) = layer_of(module) else {
            panic!("module {module} has no layer; add it here and to ARCHITECTURE.md");
        };
        for used in uses {
            let theirs = layer_of(used).unwrap_or_else(|| panic!("{module} uses {used}?"));
            assert!(
                theirs <= own,
                "{module} (layer {own}) uses {used} (layer {theirs}), against the direction"
            );
        }
    }
    // The kit names no feature: the router that merges them is the app's.
    assert!(graph["api"].iter().all(|m| m == "config"), "{graph:?}");
    // The dashboard reaches the features only through the API's router, in process.
    assert!(
        graph["dashboard"]
            .iter()
            .all(|m| m == "config" || m == "api"),
        "{graph:?}"
    );
}

#[test]
fn a_circle_is_found_and_a_line_of_layers_is_not_one() {
    let graph = |edges: &[(&str, &str)]| {
        let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in edges {
            g.entry(a.to_string()).or_default().insert(b.to_string());
            g.entry(b.to_string()).or_default();
        }
        g
    };
    assert_eq!(circle(&graph(&[("a", "b"), ("b", "c"), ("a", "c")])), None);
    let found = circle(&graph(&[("a", "b"), ("b", "c"), ("c", "a")])).unwrap();
    assert_eq!(found.first(), found.last());
    assert_eq!(found.len(), 4);
}

/// A file holds one concern; past about 800 lines of code (its tests apart), it holds two.
#[test]
fn no_source_file_holds_more_than_800_lines_of_code() {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(crates_dir()).unwrap() {
        sources(&entry.unwrap().path().join("src"), &mut files);
    }
    let mut long = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let code = code_of(&text).len();
        if code > 800 {
            long.push(format!("{} ({code} lines)", file.display()));
        }
    }
    assert!(long.is_empty(), "split these: {long:?}");
}

/// An API route is declared with its `#[utoipa::path]` and registered by `routes!`, which
/// takes its path and method from that declaration, so the OpenAPI document cannot miss
/// it. Only the dashboard's HTML pages, which are not the API, use axum's `.route(`.
#[test]
fn every_api_route_is_registered_from_its_documentation() {
    let src = crates_dir().join("merpati/src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut undocumented = Vec::new();
    for file in &files {
        if file.starts_with(src.join("dashboard")) {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in code_of(&text).iter().enumerate() {
            if line.contains(".route(") || line.contains(".nest(") {
                undocumented.push(format!("{}:{}", file.display(), n + 1));
            }
        }
    }
    assert!(
        undocumented.is_empty(),
        "register these with utoipa_axum's routes!: {undocumented:?}"
    );
}
