//! `docs/configuration.md` lists every field of `cache:` and of every
//! compiled backend; this test keeps the tables equal to the structs.

use std::collections::{BTreeMap, BTreeSet};

use tierstack::{CACHE_FIELDS, Config};

fn doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/configuration.md");
    std::fs::read_to_string(path).unwrap()
}

/// The first-column field names of each `### …` section's table.
fn tables(doc: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut section = None;
    for line in doc.lines() {
        if let Some(title) = line.strip_prefix("### ") {
            section = Some(title.trim().to_owned());
        } else if line.starts_with("## ") {
            section = None;
        } else if let (Some(section), Some(row)) = (&section, line.strip_prefix("| `")) {
            let field = row.split('`').next().unwrap().to_owned();
            out.entry(section.clone()).or_default().insert(field);
        }
    }
    out
}

/// The fields serde accepts for a tier of `kind`, from its own error for
/// an unknown field.
fn fields_of(kind: &str) -> BTreeSet<String> {
    let text =
        format!(r#"{{"cache": {{"tiers": [{{"kind": "{kind}", "zz_no_such_field": 1}}]}}}}"#);
    let error = Config::parse(&text, "json").unwrap_err().to_string();
    let expected = error
        .split("expected one of ")
        .nth(1)
        .unwrap_or_else(|| panic!("{kind}: serde lists the fields: {error}"));
    expected
        .split(',')
        .map(|f| f.trim().trim_start_matches('`'))
        .map(|f| f.split('`').next().unwrap().to_owned())
        .filter(|f| !f.is_empty())
        .collect()
}

#[test]
fn every_backend_field_has_a_row_and_every_row_a_field() {
    let tables = tables(&doc());
    let kinds: Vec<&str> = tierstack::backends().iter().map(|d| d.name).collect();
    assert!(kinds.len() >= 4, "{kinds:?}");
    for kind in kinds {
        let section = format!("`kind: {kind}`");
        let documented = tables
            .get(&section)
            .unwrap_or_else(|| panic!("docs/configuration.md has no section {section}"));
        assert_eq!(documented, &fields_of(kind), "{section}");
    }
}

#[test]
fn the_cache_table_lists_the_cache_fields() {
    let tables = tables(&doc());
    let documented = &tables["Fields of `cache:`"];
    let fields: BTreeSet<String> = CACHE_FIELDS.iter().map(|f| (*f).to_owned()).collect();
    assert_eq!(documented, &fields);
}

#[test]
fn every_backend_example_config_parses() {
    for backend in tierstack::backends() {
        let indented: String = backend
            .example_config
            .lines()
            .enumerate()
            .map(|(i, l)| {
                if i == 0 {
                    format!("    - {l}\n")
                } else {
                    format!("      {l}\n")
                }
            })
            .collect();
        let text = format!("cache:\n  tiers:\n{indented}");
        Config::parse(&text, "yaml").unwrap_or_else(|e| panic!("{}: {e}\n{text}", backend.name));
    }
}

#[test]
fn the_source_policy_table_lists_the_source_fields() {
    let tables = tables(&doc());
    let documented = &tables["Fields of a source policy"];
    let text = r#"{"cache": {"sources": {"api": {"zz_no_such_field": 1}}}}"#;
    let error = Config::parse(text, "json").unwrap_err().to_string();
    let fields: BTreeSet<String> = error
        .split("expected one of ")
        .nth(1)
        .unwrap_or_else(|| panic!("serde lists the fields: {error}"))
        .split(',')
        .map(|f| f.trim().trim_start_matches('`'))
        .map(|f| f.split('`').next().unwrap().to_owned())
        .filter(|f| !f.is_empty())
        .collect();
    assert_eq!(documented, &fields);
}
