//! The house's floors, checked: a module may use only modules on floors below its own, so no
//! import runs back up and no circle can form; and a file stays short enough to read, or says at
//! its top why it is not.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Each top-level module of `src/` and its floor. The data flows config -> plan -> fetch ->
/// decode -> normalize -> lake -> state; the orchestrator (`sync`) and the command line stand on
/// top, the shared value types at the bottom. The simulator stands beside the client, sharing
/// only the configuration's wire-format names.
const FLOORS: &[(&str, u32)] = &[
    ("model", 0),
    ("product", 0),
    ("schedule", 0),
    ("failpoint", 0),
    ("alloc", 0),
    ("disk", 0),
    ("progress", 0),
    ("events", 1),
    ("config", 1),
    ("state", 1),
    ("plan", 2),
    ("api", 2),
    ("sim", 2),
    ("fetch", 3),
    ("decode", 3),
    ("normalize", 4),
    ("lake", 5),
    ("sync", 6),
    ("cli", 7),
];

/// Longer than this, a file must say at its top why it is one file.
const MAX_LINES: usize = 600;
const LONG_REASON: &str = "//! One file because";

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn sources() -> Vec<(String, PathBuf, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    files
        .into_iter()
        .filter_map(|p| {
            let rel = p.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
            let top = rel.split('/').next().unwrap().trim_end_matches(".rs");
            (top != "lib" && top != "main").then(|| {
                let text = std::fs::read_to_string(&p).unwrap();
                (top.to_string(), p, text)
            })
        })
        .collect()
}

/// The top-level modules a file names through `crate::`.
fn uses(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        // `crate::fail_point!` is a macro of the crate root, not a module.
        if !rest[name.len()..].starts_with('!') {
            out.push(name);
        }
    }
    out
}

#[test]
fn every_module_has_a_floor_and_uses_only_floors_below_it() {
    let floors: BTreeMap<&str, u32> = FLOORS.iter().copied().collect();
    let mut wrong = Vec::new();
    for (module, path, text) in sources() {
        let Some(&mine) = floors.get(module.as_str()) else {
            wrong.push(format!(
                "{module} ({}) has no floor in FLOORS",
                path.display()
            ));
            continue;
        };
        for used in uses(&text) {
            if used == module {
                continue;
            }
            match floors.get(used.as_str()) {
                Some(&theirs) if theirs < mine => {}
                Some(&theirs) => wrong.push(format!(
                    "{} uses crate::{used} (floor {theirs}) from {module} (floor {mine})",
                    path.display()
                )),
                None => wrong.push(format!("{} uses unknown crate::{used}", path.display())),
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn long_files_say_why_they_are_one_file() {
    let long: Vec<String> = sources()
        .into_iter()
        .filter(|(_, _, text)| text.lines().count() > MAX_LINES && !text.contains(LONG_REASON))
        .map(|(_, p, text)| format!("{} ({} lines)", p.display(), text.lines().count()))
        .collect();
    assert!(
        long.is_empty(),
        "split these, or say at their top `{LONG_REASON} …`: {}",
        long.join(", ")
    );
}

#[test]
fn the_check_sees_uses() {
    assert_eq!(
        uses("use crate::model::Counts;\nlet x = crate::lake::WRITERS; crate::fail_point!(\"x\");"),
        ["model", "lake"]
    );
}

/// The names a product's declaration owns: its columns' vendor and lake names, its partition
/// directories and its request tokens and filter flags. Names of one word (`status`, `reason`,
/// `phase`) are left out: they are also ordinary words of the code (a job's status, a plan's
/// reason), and a product's column of one word is found by its vendor name's second word when
/// it has one.
fn declared_names() -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for p in dpss_sync::product::builtins() {
        for c in &p.columns {
            out.insert(c.vendor.clone());
            out.insert(c.lake.clone());
        }
        out.insert(p.partition_name.clone());
        out.insert(p.quarantine_partition.clone());
        out.extend(p.window_tokens.iter().map(|t| t.name.clone()));
        for f in &p.filters {
            out.insert(f.flag.clone());
            out.insert(f.token.clone());
        }
    }
    let words = |n: &str| {
        n.split(['_', '-']).count() > 1 || n.chars().skip(1).any(|c| c.is_ascii_uppercase())
    };
    out.into_iter().filter(|n| words(n)).collect()
}

/// Where in `text` (not counting its test module) one of `names` appears as a whole word.
fn names_in(text: &str, names: &std::collections::BTreeSet<String>) -> Vec<(usize, String)> {
    let code = text
        .find("#[cfg(test)]\nmod tests")
        .map_or(text, |end| &text[..end]);
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = Vec::new();
    for (n, line) in code.lines().enumerate() {
        for name in names {
            let whole = line.match_indices(name.as_str()).any(|(at, _)| {
                let before = line[..at].chars().next_back().is_none_or(|c| !word(c));
                let after = line[at + name.len()..]
                    .chars()
                    .next()
                    .is_none_or(|c| !word(c));
                before && after
            });
            if whole {
                out.push((n + 1, name.clone()));
            }
        }
    }
    out
}

#[test]
fn no_product_s_column_is_named_outside_its_declaration() {
    let names = declared_names();
    assert!(names.contains("work_order_id") && names.contains("MeasurementTime"));
    let mut found = Vec::new();
    for (module, path, text) in sources() {
        let file = path.file_name().unwrap().to_string_lossy();
        // The declarations themselves, the simulator (which plays the vendor), and test code.
        if module == "product" || module == "sim" || file == "tests.rs" || file == "test_support.rs"
        {
            continue;
        }
        for (line, name) in names_in(&text, &names) {
            found.push(format!("{}:{line}: {name}", path.display()));
        }
    }
    assert!(
        found.is_empty(),
        "a product's names belong in its declaration (src/product/*.toml):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_column_check_sees_names() {
    let names = ["work_order_id".to_string(), "StatusDatetime".to_string()].into();
    let text = "let a = b.column_by_name(\"work_order_id\");\n// the StatusDatetime_x and \
                rework_order_idle are other words\n#[cfg(test)]\nmod tests { work_order_id }";
    assert_eq!(names_in(text, &names), [(1, "work_order_id".to_string())]);
}

/// The files and folders a document names in backticks (`src/lake/rewrite.rs`, `cli/daemon/mod.rs`,
/// `jobs.rs`, `migrations/`) that do not exist: a path from the repository's root or from
/// `src/`, or a bare file name found anywhere under `src/`.
fn missing_paths(doc: &str) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut names = Vec::new();
    rust_files(&root.join("src"), &mut names);
    let mut out = Vec::new();
    for token in doc.split('`').skip(1).step_by(2) {
        let pathlike =
            token.contains('/') || [".rs", ".toml", ".sql"].iter().any(|e| token.ends_with(e));
        let plain = token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./".contains(c));
        if !pathlike || !plain || token.starts_with("../") || token.starts_with('/') {
            continue;
        }
        let found = if token.contains('/') {
            root.join(token).exists() || root.join("src").join(token).exists()
        } else {
            names
                .iter()
                .any(|p| p.file_name().is_some_and(|n| n == token))
                || root.join("src/product").join(token).exists()
        };
        if !found {
            out.push(token.to_string());
        }
    }
    out
}

#[test]
fn the_architecture_walk_names_only_files_that_exist() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/architecture.md"))
            .unwrap();
    let missing = missing_paths(&doc);
    assert!(
        missing.is_empty(),
        "docs/architecture.md names what is not there: {missing:?}"
    );
    assert_eq!(
        missing_paths("`src/lake/rewrite.rs`, `jobs.rs`, `src/lake/gone.rs`, `nothing.rs`"),
        ["src/lake/gone.rs", "nothing.rs"]
    );
}
