//! Embeds the Python agent (`python/scry/**/*.py`) and the demo's sample service
//! (`python/scry_demo.py`) into the binary, so that `scry` can place
//! it wherever a target process needs it without any Python packaging on the scry side; and the
//! web UI's static files (`web/`), served by the daemon at `/`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn collect(dir: &Path, base: &Path, out: &mut Vec<(String, PathBuf)>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n == "__pycache__") {
                continue;
            }
            collect(&p, base, out);
        } else if p.extension().is_some_and(|e| e == "py") {
            let rel = p
                .strip_prefix(base)
                .unwrap_or(&p)
                .to_string_lossy()
                .into_owned();
            out.push((rel, p));
        }
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let python = manifest.join("../../python");
    let pkg = python.join("scry");
    println!("cargo:rerun-if-changed={}", pkg.display());
    let mut files = Vec::new();
    collect(&pkg, &python, &mut files);
    // The sample service of `scry demo`: outside the package, because the agent never probes
    // its own files.
    let demo = python.join("scry_demo.py");
    println!("cargo:rerun-if-changed={}", demo.display());
    if demo.is_file() {
        files.push(("scry_demo.py".to_owned(), demo));
    }
    for (_, p) in &files {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    let mut code = String::from("/// The agent's files: (path relative to the package root's parent, contents).\npub const AGENT_FILES: &[(&str, &str)] = &[\n");
    for (rel, p) in &files {
        let _ = writeln!(
            code,
            "    ({rel:?}, include_str!({:?})),",
            p.display().to_string()
        );
    }
    code.push_str("];\n");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default());
    let out = out_dir.join("agent_files.rs");
    if let Err(e) = std::fs::write(&out, code) {
        panic!("cannot write {}: {e}", out.display());
    }
    embed_web(&manifest.join("../../web"), &out_dir.join("web_files.rs"));
}

/// The web UI: every file directly under `web/` (plain HTML, CSS, JS; no build step).
fn embed_web(web: &Path, out: &Path) {
    println!("cargo:rerun-if-changed={}", web.display());
    let mut files: Vec<PathBuf> = std::fs::read_dir(web)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    let mut code = String::from("/// The web UI's files: (file name, contents).\npub const WEB_FILES: &[(&str, &str)] = &[\n");
    for p in &files {
        println!("cargo:rerun-if-changed={}", p.display());
        let Some(name) = p.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue;
        };
        let _ = writeln!(
            code,
            "    ({name:?}, include_str!({:?})),",
            p.display().to_string()
        );
    }
    code.push_str("];\n");
    if let Err(e) = std::fs::write(out, code) {
        panic!("cannot write {}: {e}", out.display());
    }
}
