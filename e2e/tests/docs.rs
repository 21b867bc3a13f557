//! Documentation checks: every relative link in README.md and docs/ resolves.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

fn markdown_files() -> Vec<PathBuf> {
    let mut out = vec![root().join("README.md")];
    let mut stack = vec![root().join("docs")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("docs dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "md") {
                out.push(p);
            }
        }
    }
    out
}

/// `](target)` link targets of a markdown text.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        if let Some(j) = rest.find(')') {
            out.push(rest[..j].to_string());
            rest = &rest[j..];
        }
    }
    out
}

#[test]
fn relative_links_resolve() {
    let mut checked = 0;
    let mut broken = Vec::new();
    for f in markdown_files() {
        let text = std::fs::read_to_string(&f).expect("read markdown");
        for l in links(&text) {
            if l.starts_with("http://")
                || l.starts_with("https://")
                || l.starts_with('#')
                || l.starts_with("mailto:")
            {
                continue;
            }
            let path = l.split('#').next().unwrap_or("");
            if path.is_empty() {
                continue;
            }
            checked += 1;
            let target = f.parent().expect("parent").join(path);
            if !target.exists() {
                broken.push(format!("{}: {l}", f.display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    assert!(checked > 5, "only {checked} links found");
}
