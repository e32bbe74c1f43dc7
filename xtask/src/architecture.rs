//! `cargo xtask check-architecture`: the module-structure rules of docs/architecture.md, checked
//! from the sources. In every crate, no two modules may depend on each other (a module depends on
//! another when it names it through a `crate::` or `super::` path, in a `use` or inline, or uses
//! an item the crate root re-exports from it); and no source file of ipld-train may exceed a
//! line budget. Comments and a file's closing `#[cfg(test)] mod tests` are ignored; `lib.rs`
//! (which re-exports) is not a dependency.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// A crate's modules: module path (`a::b`, "" for the root) -> source file.
fn modules(src: &Path) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| dir.display().to_string())? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src)?.with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(
                parts.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                parts.pop();
            }
            out.insert(parts.join("::"), path);
        }
    }
    Ok(out)
}

/// The source without `//` comments (outside string literals, approximately: a `//` after an
/// odd number of quotes on its line is kept).
fn strip_comments(text: &str) -> String {
    text.lines()
        .map(|line| {
            let mut quotes = 0;
            let bytes = line.as_bytes();
            for i in 0..bytes.len() {
                match bytes[i] {
                    b'"' if i == 0 || bytes[i - 1] != b'\\' => quotes += 1,
                    b'/' if bytes.get(i + 1) == Some(&b'/') && quotes % 2 == 0 => {
                        return &line[..i];
                    }
                    _ => {}
                }
            }
            line
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The names `lib.rs` re-exports, each with the module it comes from (`pub use m::{A, B};`).
fn reexports(lib: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for stmt in lib.split(';') {
        let Some(rest) = stmt.trim().strip_prefix("pub use ") else {
            continue;
        };
        let Some((module, items)) = rest.split_once("::") else {
            continue;
        };
        for item in items
            .trim_matches(|c| c == '{' || c == '}' || c == ' ')
            .split(',')
        {
            let name = item.split(" as ").last().unwrap_or("").trim();
            if !name.is_empty() {
                out.insert(name.to_string(), module.trim().to_string());
            }
        }
    }
    out
}

/// Every path that starts with `crate::` or `super::` in `text`, brace groups expanded, as
/// (anchor, components).
fn paths(text: &str) -> Vec<(String, Vec<String>)> {
    fn expand(prefix: &[String], rest: &str, out: &mut Vec<Vec<String>>) {
        let rest = rest.trim();
        if let Some(inner) = rest.strip_prefix('{') {
            let inner = inner.strip_suffix('}').unwrap_or(inner);
            let (mut depth, mut start) = (0, 0);
            for (i, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        expand(prefix, &inner[start..i], out);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            expand(prefix, &inner[start..], out);
            return;
        }
        match rest.split_once("::") {
            Some((head, tail)) => {
                let mut p = prefix.to_vec();
                p.push(head.trim().to_string());
                expand(&p, tail, out);
            }
            None => {
                let mut p = prefix.to_vec();
                let name = rest.split(" as ").next().unwrap_or("").trim();
                if !name.is_empty() {
                    p.push(name.to_string());
                }
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    for anchor in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(i) = text[from..].find(anchor) {
            let start = from + i;
            from = start + anchor.len();
            let before = text[..start].chars().last();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            // The path runs until a character that cannot be part of it (outside braces).
            let mut depth = 0;
            let mut end = from;
            for (j, c) in text[from..].char_indices() {
                end = from + j;
                match c {
                    '{' => depth += 1,
                    '}' if depth > 0 => depth -= 1,
                    c if c.is_alphanumeric() || c == '_' || c == ':' => {}
                    _ if depth > 0 => {}
                    _ => break,
                }
                end = from + j + c.len_utf8();
            }
            let mut expanded = Vec::new();
            expand(&[], text[from..end].trim_end_matches(':'), &mut expanded);
            for p in expanded {
                out.push((anchor.trim_end_matches("::").to_string(), p));
            }
        }
    }
    out
}

/// The modules `module` (file text `text`) depends on.
fn dependencies(
    module: &str,
    text: &str,
    mods: &BTreeMap<String, PathBuf>,
    reexported: &BTreeMap<String, String>,
) -> BTreeSet<String> {
    let here: Vec<&str> = if module.is_empty() {
        vec![]
    } else {
        module.split("::").collect()
    };
    // A unit-test module at the end of a file is not part of the module's structure.
    let text = match text.find("#[cfg(test)]\nmod tests {") {
        Some(i) => &text[..i],
        None => text,
    };
    let text = strip_comments(text);
    let mut out = BTreeSet::new();
    // `use child::...` / `use self::child::...`: a submodule named relative to this one.
    for stmt in text.split(';') {
        let Some(rest) = stmt.trim_start().strip_prefix("use ") else {
            continue;
        };
        let rest = rest.trim().trim_start_matches("self::");
        let first = rest.split("::").next().unwrap_or("").trim();
        let child = if module.is_empty() {
            first.to_string()
        } else {
            format!("{module}::{first}")
        };
        if !module.is_empty() && mods.contains_key(&child) {
            out.insert(child);
        }
    }
    for (anchor, comps) in paths(&text) {
        let mut cur: Vec<String> = match anchor.as_str() {
            "super" => here[..here.len().saturating_sub(1)]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            _ => vec![],
        };
        let mut rest = comps.as_slice();
        while let Some((first, tail)) = rest.split_first() {
            let mut next = cur.clone();
            next.push(first.clone());
            if mods.contains_key(&next.join("::")) {
                cur = next;
                rest = tail;
            } else {
                break;
            }
        }
        let target = if cur.is_empty() {
            match rest.first().and_then(|n| reexported.get(n)) {
                Some(m) => m.clone(),
                None => continue,
            }
        } else {
            cur.join("::")
        };
        if target != module {
            out.insert(target);
        }
    }
    out
}

/// Pairs of modules of the crate at `src` that depend on each other.
pub fn mutual_imports(src: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let mods = modules(src)?;
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap_or_default();
    let reexported = reexports(&lib);
    let mut deps = BTreeMap::new();
    for (m, file) in &mods {
        if m.is_empty() {
            continue;
        }
        let text = std::fs::read_to_string(file)?;
        deps.insert(m.clone(), dependencies(m, &text, &mods, &reexported));
    }
    let mut out = Vec::new();
    for (a, ds) in &deps {
        for b in ds {
            if a < b && deps.get(b).is_some_and(|d| d.contains(a)) {
                out.push((a.clone(), b.clone()));
            }
        }
    }
    Ok(out)
}

/// Runs both checks on the workspace at `root`.
pub fn run(root: &Path, max_lines: usize) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    let mut crates: Vec<PathBuf> = std::fs::read_dir(root.join("crates"))?
        .filter_map(|e| e.ok().map(|e| e.path().join("src")))
        .filter(|p| p.is_dir())
        .collect();
    crates.sort();
    for src in &crates {
        for (a, b) in mutual_imports(src)? {
            problems.push(format!(
                "{}: `{a}` and `{b}` import each other",
                src.display()
            ));
        }
    }
    let train = root.join("crates/ipld-train/src");
    for (_, file) in modules(&train)? {
        let lines = std::fs::read_to_string(&file)?.lines().count();
        if lines > max_lines {
            problems.push(format!(
                "{}: {lines} lines, over the {max_lines}-line budget",
                file.display()
            ));
        }
    }
    if !problems.is_empty() {
        bail!("architecture check failed:\n  {}", problems.join("\n  "));
    }
    println!(
        "architecture: no mutual imports in {} crates; every ipld-train file within {max_lines} lines",
        crates.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, files: &[(&str, &str)]) {
        for (name, text) in files {
            let p = dir.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
    }

    #[test]
    fn finds_mutual_imports_through_use_inline_paths_braces_and_reexports() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path();
        write(
            src,
            &[
                ("lib.rs", "mod a; mod b; mod c; mod d;\npub use d::Thing;\n"),
                ("a.rs", "use crate::{c, b::X};\n"),
                ("b.rs", "fn f() { crate::a::g(); }\n"),
                ("c.rs", "use crate::Thing;\n// use crate::a; (a comment)\n"),
                (
                    "d.rs",
                    "pub struct Thing; fn h() { let _ = crate::c::Y; }\n",
                ),
            ],
        );
        let pairs = mutual_imports(src).unwrap();
        assert_eq!(
            pairs,
            vec![
                ("a".to_string(), "b".to_string()),
                ("c".to_string(), "d".to_string())
            ]
        );
    }

    #[test]
    fn a_child_using_its_parent_is_fine_unless_the_parent_uses_it_back() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path();
        write(
            src,
            &[
                ("lib.rs", "mod p;\n"),
                ("p/mod.rs", "mod q; mod r;\nuse r::R;\npub struct P;\n"),
                ("p/q.rs", "use super::P;\n"),
                ("p/r.rs", "use super::P;\npub struct R;\n"),
            ],
        );
        assert_eq!(
            mutual_imports(src).unwrap(),
            vec![("p".to_string(), "p::r".to_string())]
        );
    }
}
