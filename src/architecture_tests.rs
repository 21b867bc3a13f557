//! The dependency direction of the code base (docs/development.md), checked on the sources:
//! every `crate::…` and `super::…` path is resolved to the module it names, and an import
//! against the direction fails here, naming the file, the line and the rule.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Which top-level modules each top-level module may use. Test-only helpers
/// (`test_support`) may be used by anyone.
const TOP: &[(&str, &[&str])] = &[
    ("api", &[]),
    ("telemetry", &["api"]),
    ("engine", &["api", "telemetry"]),
    ("preflight", &["api", "engine"]),
    ("server", &["api", "engine"]),
    // The command line is a top: it turns its flags into the operator's plain options.
    ("cli", &["api", "operator"]),
    ("operator", &["api"]),
    ("demo", &["api", "cli"]),
    (
        "worker",
        &["api", "cli", "engine", "preflight", "server", "telemetry"],
    ),
];

/// Inside the engine, a module may only use modules of a lower rank: shared pieces, then the
/// store, then the catalog, then the stages that build on it, then the orchestration.
const ENGINE_RANK: &[(&str, u8)] = &[
    ("error", 0),
    ("optime", 0),
    ("filter", 0),
    ("tuning", 0),
    ("state", 0),
    ("sizes", 0),
    ("reply", 1),
    ("conn", 1),
    ("store", 2),
    ("live", 3),
    ("ctx", 4),
    ("catalog", 5),
    ("copy", 6),
    ("repl", 6),
    ("finalize", 6),
    ("stages", 7),
    // The orchestration: mod.rs, control.rs, pipeline.rs, tests.rs.
    ("", 8),
    ("control", 8),
    ("pipeline", 8),
    ("tests", 8),
    // A reverse's checks and its preparation of the old source (used by the pipeline).
    ("reverse", 7),
    // The worker's pair of jobs: its migration and, after finalize, its reverse.
    ("reversal", 8),
];

fn src() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a source file: `src/engine/copy/mod.rs` → `[engine, copy]`.
fn module_of(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src()).unwrap_or(file);
    let mut parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts
        .last()
        .is_some_and(|l| l == "mod" || l == "lib" || l == "main")
    {
        parts.pop();
    }
    parts
}

/// Every module path a file names, with its line: `crate::a::b` and `super::…::x` resolved
/// against the file's own module.
fn references(file: &Path, text: &str) -> Vec<(usize, Vec<String>)> {
    let here = module_of(file);
    let path_re = regex::Regex::new(
        r"\b(crate|super)((?:::super)*)::([a-z_][a-z0-9_]*)(?:::([a-z_][a-z0-9_]*))?",
    )
    .expect("regex");
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        for c in path_re.captures_iter(code) {
            let first = c.get(3).map(|m| m.as_str().to_string()).unwrap_or_default();
            let second = c.get(4).map(|m| m.as_str().to_string());
            let target = if &c[1] == "crate" {
                let mut t = vec![first];
                t.extend(second);
                t
            } else {
                // Each `super` names the parent of the file's module (a mod.rs is its
                // directory's module).
                let ups = 1 + c[2].matches("super").count();
                let mut base = here.clone();
                for _ in 0..ups {
                    base.pop();
                }
                base.push(first);
                base.extend(second);
                base
            };
            out.push((i + 1, target));
        }
    }
    out
}

fn allowed_top(from: &str, to: &str) -> bool {
    if from == to || to == "test_support" {
        return true;
    }
    TOP.iter()
        .find(|(m, _)| *m == from)
        .is_some_and(|(_, ok)| ok.contains(&to))
}

fn engine_rank(m: &str) -> Option<u8> {
    ENGINE_RANK.iter().find(|(n, _)| *n == m).map(|(_, r)| *r)
}

/// Violations of the rules in `files` (path, text): `file:line: rule`.
fn violations(files: &[(PathBuf, String)]) -> Vec<String> {
    let mut bad = Vec::new();
    for (file, text) in files {
        let from = module_of(file);
        let Some(top) = from.first().cloned() else {
            continue;
        };
        if !TOP.iter().any(|(m, _)| *m == top) {
            // main.rs, lib.rs and test-only modules wire everything together.
            continue;
        }
        for (line, to) in references(file, text) {
            let Some(to_top) = to.first() else { continue };
            let known = TOP.iter().any(|(m, _)| m == to_top) || to_top == "test_support";
            if known && !allowed_top(&top, to_top) {
                bad.push(format!(
                    "{}:{line}: `{top}` may not use `{to_top}` (allowed: {:?})",
                    file.display(),
                    TOP.iter()
                        .find(|(m, _)| *m == top)
                        .map(|(_, a)| *a)
                        .unwrap_or(&[])
                ));
            }
            if top == "engine" && to_top == "engine" {
                let fm = from.get(1).map(String::as_str).unwrap_or("");
                let tm = to.get(1).map(String::as_str).unwrap_or("");
                if let (Some(fr), Some(tr)) = (engine_rank(fm), engine_rank(tm)) {
                    if fm != tm && tr >= fr {
                        bad.push(format!(
                            "{}:{line}: `engine::{fm}` (rank {fr}) may not use `engine::{tm}` (rank {tr}): the engine's modules depend downwards only",
                            file.display()
                        ));
                    }
                }
            }
        }
    }
    bad
}

#[test]
fn imports_follow_the_dependency_direction() {
    let mut paths = Vec::new();
    rust_files(&src(), &mut paths);
    let files: Vec<(PathBuf, String)> = paths
        .into_iter()
        .map(|p| {
            let t = std::fs::read_to_string(&p).unwrap_or_default();
            (p, t)
        })
        .collect();
    assert!(files.len() > 50, "sources not found");
    let bad = violations(&files);
    assert!(
        bad.is_empty(),
        "imports against the dependency direction (docs/development.md):\n{}",
        bad.join("\n")
    );
    // Every engine module has a rank.
    let engine_mods: BTreeSet<String> = files
        .iter()
        .map(|(p, _)| module_of(p))
        .filter(|m| m.first().is_some_and(|t| t == "engine"))
        .map(|m| m.get(1).cloned().unwrap_or_default())
        .collect();
    for m in engine_mods {
        assert!(
            engine_rank(&m).is_some(),
            "engine::{m} has no rank in ENGINE_RANK"
        );
    }
}

#[test]
fn the_check_catches_a_bad_import() {
    let f = |path: &str, text: &str| (src().join(path), text.to_string());
    let bad = violations(&[
        f("engine/store/mod.rs", "use super::copy::run;\n"),
        f(
            "engine/copy/insert.rs",
            "use super::super::repl::write::Op;\n",
        ),
        f("preflight/gather.rs", "use crate::worker::endpoints;\n"),
        f("operator/mod.rs", "use crate::cli::OperatorArgs;\n"),
        f("api/mod.rs", "use crate::engine::Engine;\n"),
    ]);
    assert_eq!(bad.len(), 5, "{bad:#?}");
    assert!(bad[0].contains("engine::store") && bad[0].contains("engine::copy"));
    assert!(bad[2].contains("`preflight` may not use `worker`"));
    let good = violations(&[
        f(
            "engine/copy/mod.rs",
            "use super::store::Checkpoint;\nuse crate::api::State;\n",
        ),
        f("engine/copy/insert.rs", "use super::super::ctx::Ctx;\n"),
        f("worker.rs", "use crate::server::router;\n"),
    ]);
    assert!(good.is_empty(), "{good:#?}");
}
