//! ARCHITECTURE.md's rule, checked: a room imports only rooms below it. The order is the
//! one ARCHITECTURE.md draws ("Rooms and the direction of imports"), top first; the test
//! also checks that the document lists the rooms in this order, so neither drifts.

use std::path::{Path, PathBuf};

/// Every module of `src/`, the highest first. A module imports only modules after it.
const ROOMS: &[&str] = &[
    "main",
    "demo",
    "bench",
    "operator",
    "app",
    "config",
    "console",
    "admin",
    "recovery",
    "enrich",
    "ingest",
    "delivery",
    "error",
    "metrics",
    "store",
    "sessions",
    "vendors",
    "testing",
    "auth",
    "event",
    "settings",
    "clock",
    "telemetry",
];

fn sources(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// The room a file of `src/` belongs to.
fn room_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).unwrap();
    let first = relative.components().next().unwrap().as_os_str();
    let first = first.to_str().unwrap();
    match first.strip_suffix(".rs") {
        Some(name) => name.to_owned(),
        // `src/bin/loadgen.rs` and `src/bench/` are the benchmark.
        None if first == "bin" => "bench".to_owned(),
        None => first.to_owned(),
    }
}

/// A file's code without its tests and comments (tests may reach anywhere; a doc link is
/// not an import).
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|line| match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn each_room_imports_only_the_rooms_below_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let rank = |room: &str| ROOMS.iter().position(|r| *r == room);
    let mut wrong = Vec::new();
    for file in &files {
        let room = room_of(&src, file);
        if room == "lib" {
            continue;
        }
        let Some(own) = rank(&room) else {
            panic!("{} is in no room of ARCHITECTURE.md", file.display());
        };
        // Test-only files (a suite, a tests.rs) are tests.
        let name = file.to_str().unwrap();
        if name.contains("/suite/") || name.ends_with("/tests.rs") {
            continue;
        }
        let text = code(&std::fs::read_to_string(file).unwrap());
        for (i, _) in text.match_indices("crate::") {
            let used: String = text[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if used == room || used.chars().next().is_some_and(|c| c.is_uppercase()) {
                continue;
            }
            match rank(&used) {
                Some(theirs) if theirs > own => {}
                _ => wrong.push(format!("{} ({room}) imports crate::{used}", file.display())),
            }
        }
    }
    wrong.sort();
    wrong.dedup();
    assert!(wrong.is_empty(), "imports upwards:\n{}", wrong.join("\n"));
}

#[test]
fn architecture_md_lists_the_rooms_in_this_order() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/ARCHITECTURE.md")).unwrap();
    let start = doc.find("## Rooms and the direction of imports").unwrap();
    let block = &doc[start..];
    let block = &block[block.find("```").unwrap() + 3..];
    let block = &block[..block.find("```").unwrap()];
    // Each room's first mention as a word at the start of its entry: after the column of
    // labels (`top`, `rooms`, `leaves`) or after two spaces.
    let mut at = 0;
    for room in ROOMS {
        let found = block[at..]
            .match_indices(room)
            .map(|(i, _)| at + i)
            .find(|&i| {
                let before = &block[..i];
                let after = block[i + room.len()..].chars().next().unwrap_or(' ');
                (before.ends_with("  ") || before.ends_with('\n'))
                    && (after == ' ' || after == '/' || after == '\n')
            });
        match found {
            Some(i) => at = i + room.len(),
            None => panic!("ARCHITECTURE.md does not list `{room}` after the rooms above it"),
        }
    }
}
