//! `unsafe` is denied workspace-wide and allowed in one module, the SIMD arithmetic of
//! `verify::mb`; there every block carries a `// SAFETY:` comment. The lint enforces the
//! first part at compile time only where nobody wrote an `allow`: this test holds the
//! sources to the rule itself.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn unsafe_lives_only_in_the_simd_module_and_each_block_says_why() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut files = Vec::new();
    for dir in [
        "gateway/src",
        "gateway/tests",
        "benches/src",
        "benches/benches",
    ] {
        rust_files(&root.join(dir), &mut files);
    }
    let simd = root.join("gateway/src/verify/mb");
    let this = Path::new(file!()).file_name().unwrap();
    let (mut allows, mut blocks) = (0, 0);
    for file in &files {
        if file.file_name() == Some(this) {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if code.contains("allow(unsafe_code)") {
                allows += 1;
                assert!(
                    file.ends_with("gateway/src/verify/mod.rs")
                        && lines[i + 1].contains("pub mod mb;"),
                    "{}:{}: unsafe allowed outside verify::mb",
                    file.display(),
                    i + 1
                );
            }
            if !code
                .split(|c: char| !c.is_alphanumeric() && c != '_')
                .any(|w| w == "unsafe")
            {
                continue;
            }
            assert!(
                file.starts_with(&simd),
                "{}:{}: unsafe outside verify::mb",
                file.display(),
                i + 1
            );
            blocks += 1;
            assert!(
                lines[..i]
                    .iter()
                    .rev()
                    .take(3)
                    .any(|l| l.trim_start().starts_with("// SAFETY:")),
                "{}:{}: an unsafe block without a // SAFETY: comment just above",
                file.display(),
                i + 1
            );
        }
    }
    assert_eq!(allows, 1, "exactly one module allows unsafe");
    assert!(blocks > 0, "the SIMD module's blocks were found");
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    assert!(
        manifest.contains("unsafe_code = \"deny\""),
        "the workspace lint denies unsafe"
    );
}
