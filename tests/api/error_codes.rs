//! The README's "Error codes" table and the codes the server answers with stay in step:
//! every code in `ErrorCode::ALL` is in the table and every code in the table exists,
//! and no code is spelled anywhere in the server but beside `ErrorCode`.

use std::collections::BTreeSet;
use std::path::Path;

use careboard::error::ErrorCode;

/// The codes in the first column of README.md's "### Error codes" table.
fn readme_codes() -> BTreeSet<String> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("read README.md");
    let table = readme
        .split("### Error codes")
        .nth(1)
        .expect("README.md has an \"Error codes\" section");
    let rows: Vec<&str> = table
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2) // header and separator
        .collect();
    assert!(!rows.is_empty(), "the Error codes table has rows");
    let mut codes = BTreeSet::new();
    for row in rows {
        let cells: Vec<&str> = row.split('|').collect();
        assert!(cells.len() >= 4, "code | meaning | returned by: {row}");
        assert!(
            !cells[3].trim().is_empty(),
            "the row says which operations return it: {row}"
        );
        let first = cells[1];
        let spelled: Vec<&str> = first.split('`').skip(1).step_by(2).collect();
        assert!(!spelled.is_empty(), "a code in backticks: {row}");
        for code in spelled {
            assert!(
                codes.insert(code.to_string()),
                "{code} is in the table twice"
            );
        }
    }
    codes
}

#[test]
fn the_readme_error_code_table_lists_exactly_the_codes_the_server_has() {
    let in_code: BTreeSet<String> = ErrorCode::ALL
        .iter()
        .map(|c| c.as_str().to_string())
        .collect();
    assert_eq!(in_code.len(), ErrorCode::ALL.len(), "codes spelled twice");
    let in_readme = readme_codes();
    let missing: Vec<_> = in_code.difference(&in_readme).collect();
    let unknown: Vec<_> = in_readme.difference(&in_code).collect();
    assert!(
        missing.is_empty(),
        "codes the server answers with but README's Error codes table lacks: {missing:?}"
    );
    assert!(
        unknown.is_empty(),
        "codes in README's Error codes table the server never answers with: {unknown:?}"
    );
}

/// The table can only be complete if every code goes through `ErrorCode`: outside
/// `src/error.rs`, no production code spells one as a string literal.
#[test]
fn no_error_code_is_spelled_outside_error_code() {
    let known: BTreeSet<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    let mut stray = Vec::new();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for path in crate::helpers::files::files_under("src") {
        if path.extension().is_none_or(|e| e != "rs") || path.ends_with("src/error.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        // Unit tests may compare against the spelling; production code may not.
        let production = crate::helpers::files::production_part(&text);
        for (n, line) in production.lines().enumerate() {
            for literal in line.split('"').skip(1).step_by(2) {
                let upper_snake = literal.len() >= 4
                    && literal.chars().all(|c| c.is_ascii_uppercase() || c == '_');
                let code_like = known.contains(literal)
                    || (upper_snake && line.to_lowercase().contains("code"));
                if code_like {
                    stray.push(format!(
                        "{}:{}: {}",
                        path.strip_prefix(&src).unwrap().display(),
                        n + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        stray.is_empty(),
        "error codes spelled outside ErrorCode (use ErrorCode and add new ones to ALL and \
         the README table):\n{}",
        stray.join("\n")
    );
}
