//! Replays the fuzz corpora without a fuzzer: every file under `fuzz/corpus/<target>/` goes
//! through the same check its `cargo fuzz` target runs (`fuzz/checks.rs`), on a stable
//! toolchain, so every input the fuzzer ever kept stays a regression test.
//!
//! ```text
//! cargo test --all-features --test fuzz_corpus
//! ```
#![cfg(all(feature = "http", feature = "flag-files"))]

use std::path::Path;

#[allow(unreachable_pub)]
#[path = "../fuzz/checks.rs"]
mod checks;

#[test]
fn every_corpus_file_passes_its_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut failures = Vec::new();
    for (target, check) in checks::TARGETS {
        let dir = root.join(target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.expect("a directory entry").path())
            .filter(|path| path.is_file())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no seeds in {}", dir.display());
        for path in files {
            let data = std::fs::read(&path).expect("a corpus file");
            if std::panic::catch_unwind(|| check(&data)).is_err() {
                failures.push(format!("{target}: {}", path.display()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "checks failed on:\n{}",
        failures.join("\n")
    );
}

/// Every target file has a check and a corpus, and every check a target file.
#[test]
fn targets_checks_and_corpora_match() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files: Vec<String> = std::fs::read_dir(root.join("fuzz_targets"))
        .expect("fuzz/fuzz_targets")
        .map(|e| e.expect("an entry").path())
        .filter_map(|p| Some(p.file_stem()?.to_str()?.to_owned()))
        .collect();
    files.sort();
    let mut names: Vec<String> = checks::TARGETS
        .iter()
        .map(|(n, _)| (*n).to_owned())
        .collect();
    names.sort();
    assert_eq!(files, names);
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("fuzz/Cargo.toml");
    for name in &names {
        assert!(manifest.contains(&format!("name = \"{name}\"")), "{name}");
        assert!(root.join("corpus").join(name).is_dir(), "{name}");
    }
}
