//! Helpers shared by unit tests: checked-in generated files and the metrics page.

/// Assert that the checked-in file `rel` (from the crate root) equals `generated`; with
/// `MONGOFERRY_UPDATE_CRD` set, rewrite it first. `regen` is the command that regenerates it.
pub fn assert_checked_in(rel: &str, generated: &str, regen: &str) {
    let path = format!("{}/{rel}", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("MONGOFERRY_UPDATE_CRD").is_some() {
        std::fs::write(&path, generated).expect("write generated file");
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == generated,
        "{rel} is stale: run `{regen}` (or MONGOFERRY_UPDATE_CRD=1 cargo test crd)"
    );
}

/// Metric names in the tables of docs/metrics.md that `keep` accepts, sorted.
pub fn documented_metrics(keep: impl Fn(&str) -> bool) -> Vec<String> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md"))
        .expect("docs/metrics.md");
    let mut names: Vec<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|n| keep(n))
        .map(str::to_string)
        .collect();
    names.sort();
    names
}
