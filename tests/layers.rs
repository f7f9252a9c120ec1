//! The house: each module of `src/` uses only modules below it, in the
//! order `lib.rs` lists them, so the import graph has no cycle. Checked
//! from the source: every `crate::<module>` path in a file's code.

mod common;

/// Top to bottom, as in `lib.rs`.
const LAYERS: [&str; 15] = [
    "stack",
    "register",
    "finish",
    "background",
    "strict",
    "unwind",
    "registry",
    "erased",
    "integrations",
    "resources",
    "traits",
    "linger",
    "timer",
    "error",
    "owned",
];

/// The module a file of `src/` belongs to: `src/unwind/flight.rs` is
/// `unwind`.
fn module_of(path: &std::path::Path) -> Option<String> {
    let rel = path.strip_prefix(concat!(env!("CARGO_MANIFEST_DIR"), "/src")).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?.to_owned();
    Some(first.trim_end_matches(".rs").to_owned())
}

#[test]
fn every_module_uses_only_modules_below_it() {
    let mut checked = 0;
    for (path, code) in common::library_sources() {
        let module = module_of(&path).unwrap();
        if module == "lib" {
            continue; // the root re-exports everything
        }
        let rank = LAYERS
            .iter()
            .position(|m| *m == module)
            .unwrap_or_else(|| panic!("{module} is not in LAYERS: place it"));
        for (n, line) in code.lines().enumerate() {
            let line = line.trim_start();
            if line.starts_with("//") {
                continue;
            }
            for (at, _) in line.match_indices("crate::") {
                let used: String = line[at + 7..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                let Some(used_rank) = LAYERS.iter().position(|m| *m == used) else {
                    continue; // a re-export of the root, such as `crate::AsyncExitStack` in docs
                };
                assert!(
                    used_rank >= rank,
                    "{}:{}: `{module}` uses `{used}`, a layer above it: {line}",
                    path.display(),
                    n + 1
                );
            }
        }
        checked += 1;
    }
    assert!(checked >= 15, "found the source files ({checked})");
}
