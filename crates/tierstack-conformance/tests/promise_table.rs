//! `docs/testing.md` keeps a table of every promise the README, `docs/`
//! and the backends' `docs.md` make, with the tests that prove each. This
//! test reads the table and fails when a listed test does not exist: its
//! file is missing, or the file has no such test. A test is
//!
//! - a function `fn NAME` marked `#[test]` or `#[tokio::test]` (in a test
//!   file or a unit-test module), or a test registered by name in a
//!   `harness = false` target's `main` (`("NAME", f)` as
//!   `environment::main` takes them, `"backend::NAME"`, `case!(NAME)`, or
//!   the `test NAME ... ok` line it prints);
//! - in a file that runs `conformance_suite!`, a conformance case
//!   ([`tierstack_conformance::all_cases`]);
//! - in a file that runs `coordination_suite!`, a coordination case (the
//!   macro's list in `src/coordination.rs`);
//! - in a file that runs `processes::main`, a process test that suite
//!   runs for that backend;
//! - in `scripts/compat.sh`, a `check "NAME"` line.
//!
//! It also checks that every page that makes promises is cited at least
//! once, so that a page does not drop out of the table unnoticed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One row of the table: the promise, where it is made, the tests.
#[derive(Debug)]
struct Row {
    line: usize,
    promise: String,
    made_in: Vec<String>,
    tests: Vec<(String, String)>,
}

/// The text between backticks in `cell`.
fn quoted(cell: &str) -> Vec<String> {
    cell.split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s.to_owned())
        .collect()
}

/// Splits a table row on `|`, keeping `|` inside backticks.
fn cells(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    for c in line.trim().trim_matches('|').chars() {
        match c {
            '`' => {
                quoted = !quoted;
                out.last_mut().unwrap().push(c);
            }
            '|' if !quoted => out.push(String::new()),
            _ => out.last_mut().unwrap().push(c),
        }
    }
    out.into_iter().map(|c| c.trim().to_owned()).collect()
}

fn table(doc: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut in_section = false;
    let mut header_seen = false;
    for (i, line) in doc.lines().enumerate() {
        let number = i + 1;
        if line.starts_with("## ") {
            in_section = line == "## Promises and their tests";
            continue;
        }
        if !in_section || !line.starts_with('|') {
            continue;
        }
        let cells = cells(line);
        if !header_seen {
            assert_eq!(
                cells,
                ["promise", "where it is made", "test"],
                "line {number}: the table's header"
            );
            header_seen = true;
            continue;
        }
        if cells
            .iter()
            .all(|c| c.chars().all(|ch| ch == '-' || ch == ' '))
        {
            continue;
        }
        assert_eq!(cells.len(), 3, "line {number}: three cells: {line}");
        let tests = quoted(&cells[2])
            .into_iter()
            .map(|t| {
                let (path, name) = t
                    .split_once("::")
                    .unwrap_or_else(|| panic!("line {number}: `{t}` is not `path::test`"));
                (path.to_owned(), name.to_owned())
            })
            .collect();
        rows.push(Row {
            line: number,
            promise: cells[0].clone(),
            made_in: cells[1]
                .split(',')
                .map(|m| m.trim().trim_matches('`').to_owned())
                .filter(|m| !m.is_empty())
                .collect(),
            tests,
        });
    }
    assert!(
        header_seen,
        "docs/testing.md has no table under \"## Promises and their tests\""
    );
    rows
}

/// Whether `text` has `fn name` as a whole name, and where its body's
/// signature starts.
fn find_fn(text: &str, name: &str) -> Option<usize> {
    let needle = format!("fn {name}");
    let mut from = 0;
    while let Some(at) = text[from..].find(&needle) {
        let at = from + at;
        let after = text[at + needle.len()..].chars().next();
        if matches!(after, Some('(' | '<')) {
            return Some(at);
        }
        from = at + needle.len();
    }
    None
}

/// Whether the function starting at `at` carries a test attribute: the
/// lines above it, up to the previous item, hold `#[test]` or
/// `#[tokio::test`.
fn is_marked_test(text: &str, at: usize) -> bool {
    let line_start = text[..at].rfind('\n').unwrap_or(0);
    for line in text[..line_start].lines().rev() {
        let line = line.trim();
        if line.starts_with("#[test]") || line.starts_with("#[tokio::test") {
            return true;
        }
        let attribute_or_comment =
            line.starts_with("#[") || line.starts_with("//") || line.is_empty();
        if !attribute_or_comment {
            return false;
        }
    }
    false
}

/// The names in the list a `macro_rules!` passes on, between `start` and
/// the next `)`.
fn listed_after(text: &str, start: &str) -> BTreeSet<String> {
    let list = text
        .split(start)
        .nth(1)
        .unwrap_or_else(|| panic!("no `{start}`"));
    let list = list.split(')').next().unwrap();
    list.split(',')
        .map(|s| s.split('[').next().unwrap().trim().to_owned())
        .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .collect()
}

/// Why `name` is not a test in `path`, or `None` when it is one.
fn missing(path: &str, name: &str) -> Option<String> {
    let file = root().join(path);
    if !file.is_file() {
        return Some(format!("{path} does not exist"));
    }
    let text = read(&file);
    if Path::new(path).extension().is_some_and(|e| e == "sh") {
        return (!text.contains(&format!("check \"{name}\"")))
            .then(|| format!("{path} has no `check \"{name}\"`"));
    }
    if find_fn(&text, name).is_some_and(|at| is_marked_test(&text, at)) {
        return None;
    }
    // A `harness = false` target's own list: `("NAME", f)` for
    // `environment::main`, `"backend::NAME"`, `case!(NAME)`, or the
    // `test NAME ... ok` line it prints itself.
    let registered = [
        format!("\"{name}\""),
        format!("::{name}\""),
        format!("case!({name})"),
        format!("test {name} ... ok"),
    ];
    let own_main = text
        .lines()
        .any(|l| l.starts_with("fn main(") || l.starts_with("async fn main("));
    if own_main && registered.iter().any(|r| text.contains(r.as_str())) {
        return None;
    }
    if text.contains("conformance_suite!")
        && tierstack_conformance::all_cases()
            .iter()
            .any(|c| c.name == name)
    {
        return None;
    }
    // Cases run once per way in (`through_both!(a, b)`: the HTTP
    // middleware and the proxy), each an `async fn NAME(kind)`.
    if text.contains("\nthrough_both!(")
        && find_fn(&text, name).is_some()
        && listed_after(&text, "\nthrough_both!(").contains(name)
    {
        return None;
    }
    if text.contains("coordination_suite!") {
        let source = read(&root().join("crates/tierstack-conformance/src/coordination.rs"));
        if listed_after(&source, "coordination_suite!(@cases $make;").contains(name) {
            return None;
        }
    }
    if text.contains("ProcessSuite")
        && read(&root().join("crates/tierstack-conformance/src/processes.rs"))
            .contains(&format!("\"{{}}::{name}\""))
    {
        let multi = text.contains("multi_process: true");
        let runs = match name {
            "writers_and_readers_in_separate_processes" => multi,
            "a_second_process_gets_a_clear_lock_error" => !multi,
            _ => true,
        };
        return (!runs).then(|| format!("{path}'s process suite does not run {name}"));
    }
    Some(match find_fn(&text, name) {
        None => format!("{path} has no test {name}"),
        Some(_) => format!("{path}: fn {name} is neither marked #[test] nor registered by name"),
    })
}

fn rows() -> Vec<Row> {
    table(&read(&root().join("docs/testing.md")))
}

#[test]
fn every_listed_test_exists() {
    let rows = rows();
    assert!(
        rows.len() >= 150,
        "only {} promises in the table",
        rows.len()
    );
    let mut problems = Vec::new();
    for row in &rows {
        if row.tests.is_empty() {
            problems.push(format!(
                "line {}: no test for \"{}\"",
                row.line, row.promise
            ));
        }
        if row.made_in.is_empty() {
            problems.push(format!(
                "line {}: \"{}\" is made nowhere",
                row.line, row.promise
            ));
        }
        for made_in in &row.made_in {
            let page = made_in.split('#').next().unwrap();
            if !root().join(page).is_file() {
                problems.push(format!("line {}: {page} does not exist", row.line));
            }
        }
        for (path, name) in &row.tests {
            if let Some(why) = missing(path, name) {
                problems.push(format!("line {}: {why}", row.line));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Every page that makes promises is cited in the table: the README, each
/// page of `docs/` and `docs/backends/` (not the decision records, which
/// are history), each backend's `docs.md` and the crates' READMEs that
/// make promises.
#[test]
fn every_page_that_makes_promises_is_in_the_table() {
    let cited: BTreeSet<String> = rows()
        .iter()
        .flat_map(|r| r.made_in.iter())
        .map(|m| m.split('#').next().unwrap().to_owned())
        .collect();
    let mut pages = vec!["README.md".to_owned()];
    for dir in ["docs", "docs/backends"] {
        for entry in std::fs::read_dir(root().join(dir)).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            // The benchmarks page reports measurements, not promises.
            let markdown = Path::new(&name).extension().is_some_and(|e| e == "md");
            if markdown && name != "benchmarks.md" {
                pages.push(format!("{dir}/{name}"));
            }
        }
    }
    for entry in std::fs::read_dir(root().join("backends")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if root()
            .join("backends")
            .join(&name)
            .join("src/docs.md")
            .is_file()
        {
            pages.push(format!("backends/{name}/src/docs.md"));
        }
    }
    pages.push("examples/custom_backend/src/docs.md".to_owned());
    pages.push("crates/tierstack-conformance/README.md".to_owned());
    pages.push("crates/tierstack-cli/README.md".to_owned());
    let uncited: Vec<&String> = pages.iter().filter(|p| !cited.contains(*p)).collect();
    assert!(uncited.is_empty(), "pages with no row: {uncited:?}");
}

/// The checks themselves: a name that is not a test is reported.
#[test]
fn a_missing_test_is_reported() {
    let here = "crates/tierstack-conformance/tests/promise_table.rs";
    assert!(missing(here, "every_listed_test_exists").is_none());
    assert!(missing(here, "no_such_test").is_some());
    assert!(missing(here, "find_fn").is_some(), "a helper is not a test");
    assert!(missing("no/such/file.rs", "x").is_some());
    let conformance = "backends/tierstack-memory/tests/conformance.rs";
    assert!(missing(conformance, "entries_survive_a_reopen").is_none());
    assert!(missing(conformance, "no_such_case").is_some());
    let coordination = "backends/tierstack-sqlite/tests/coordination.rs";
    assert!(missing(coordination, "one_of_two_owners_wins_a_lease").is_none());
    assert!(missing(coordination, "no_such_case").is_some());
    let sled = "backends/tierstack-sled/tests/processes.rs";
    assert!(missing(sled, "a_second_process_gets_a_clear_lock_error").is_none());
    assert!(missing(sled, "writers_and_readers_in_separate_processes").is_some());
    let sqlite = "backends/tierstack-sqlite/tests/processes.rs";
    assert!(missing(sqlite, "writers_and_readers_in_separate_processes").is_none());
    let environment = "backends/tierstack-sqlite/tests/environment.rs";
    assert!(missing(environment, "a_read_only_directory_is_refused_naming_it").is_none());
}
