//! Embeds the migrations (sqlx reads them at compile time) and assembles the Lua scripts.
//!
//! A script of `lua/` names the shared steps it uses with a line `--- @include "name"`; the
//! build replaces the line with the functions of `lua/includes/name.lua` that the script
//! calls (directly or through another of them), so each script Redis receives is still one
//! self-contained EVALSHA body while each shared step (the clock, an outcome, a buyer's
//! give-back, the queue entry's bytes) is written once. Only the functions called are
//! kept: Redis runs a script's body on every call, and each `local function` it meets is a
//! closure made and collected again (about 700 instructions each under callgrind), which a
//! reservation should not pay for steps it does not take.
//!
//! An include file is a header comment, then `local function name(...)` blocks, each from
//! that line (at the start of a line) to the next line that is exactly `end`, with the
//! comment lines just above it. It may include others; each is inlined once per script.
//! The assembled scripts go to `$OUT_DIR/lua/`, where `src/queue/scripts.rs` embeds them
//! (`stockq scripts NAME` prints one).
//!
//! Why not Redis FUNCTION libraries: a library must be loaded on every master before use (and
//! again after a failover to a replica that missed it), and a library name holds one version
//! at a time, so during a rolling deploy the old processes would call the new code. EVALSHA
//! bodies are told apart by their digest: each version's processes run their own scripts,
//! side by side, and load them on a miss with no step of their own.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

const INCLUDE: &str = "--- @include \"";
const FUNCTION: &str = "local function ";

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=lua");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("lua");
    fs::create_dir_all(&out).expect("create $OUT_DIR/lua");
    let mut scripts: Vec<PathBuf> = fs::read_dir("lua")
        .expect("read lua/")
        .map(|e| e.expect("read lua/").path())
        .filter(|p| p.extension().is_some_and(|x| x == "lua"))
        .collect();
    scripts.sort();
    for script in scripts {
        println!("cargo:rerun-if-changed={}", script.display());
        let text = assemble(&script).unwrap_or_else(|e| panic!("{e}"));
        let name = script.file_name().expect("a file name");
        fs::write(out.join(name), text).expect("write an assembled script");
    }
}

/// A shared function of an include file.
struct Function {
    name: String,
    /// Its comment lines and its definition.
    text: String,
}

/// The script at `path` with the functions it calls inlined at its first include line.
fn assemble(path: &Path) -> Result<String, String> {
    let text = read(path)?;
    let mut functions = Vec::new();
    let mut seen = BTreeSet::new();
    let mut own = String::new();
    let mut at = None;
    for line in text.lines() {
        match include_name(path, line)? {
            Some(name) => {
                at.get_or_insert(own.len());
                collect(&name, &mut seen, &mut functions)?;
            }
            None => {
                own.push_str(line);
                own.push('\n');
            }
        }
    }
    // the functions called from the script, then from those, until nothing new is called
    let mut used = identifiers(&own);
    loop {
        let more: BTreeSet<String> = functions
            .iter()
            .filter(|f| used.contains(&f.name))
            .flat_map(|f| identifiers(&f.text))
            .filter(|id| !used.contains(id))
            .collect();
        if more.is_empty() {
            break;
        }
        used.extend(more);
    }
    let Some(at) = at else { return Ok(own) };
    let inlined: String =
        functions.iter().filter(|f| used.contains(&f.name)).map(|f| f.text.as_str()).collect();
    Ok(format!("{}{inlined}{}", &own[..at], &own[at..]))
}

/// Appends the functions of include `name` (after those of its own includes) to `functions`.
fn collect(name: &str, seen: &mut BTreeSet<String>, functions: &mut Vec<Function>) -> Result<(), String> {
    if !seen.insert(name.to_string()) {
        return Ok(());
    }
    let path = Path::new("lua/includes").join(format!("{name}.lua"));
    println!("cargo:rerun-if-changed={}", path.display());
    let text = read(&path)?;
    let mut comment = String::new();
    let mut current: Option<Function> = None;
    for line in text.lines() {
        if let Some(f) = current.as_mut() {
            f.text.push_str(line);
            f.text.push('\n');
            if line == "end" {
                functions.extend(current.take());
            }
        } else if let Some(include) = include_name(&path, line)? {
            collect(&include, seen, functions)?;
        } else if let Some(rest) = line.strip_prefix(FUNCTION) {
            let name = rest.split('(').next().unwrap_or_default().trim().to_string();
            let text = format!("-- {}\n{}{line}\n", path.display(), std::mem::take(&mut comment));
            current = Some(Function { name, text });
        } else if line.starts_with("--") {
            comment.push_str(line);
            comment.push('\n');
        } else if line.trim().is_empty() {
            comment.clear();
        } else {
            return Err(format!("lua: {}: only functions may stand outside them: {line:?}", path.display()));
        }
    }
    match current {
        Some(f) => Err(format!("lua: {}: function {} has no line `end`", path.display(), f.name)),
        None => Ok(()),
    }
}

/// The include a line names, if it is an include line.
fn include_name(path: &Path, line: &str) -> Result<Option<String>, String> {
    let Some(rest) = line.trim_start().strip_prefix(INCLUDE) else { return Ok(None) };
    rest.strip_suffix('"')
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .map(|n| Some(n.to_string()))
        .ok_or_else(|| format!("lua: {}: bad include line {line:?}", path.display()))
}

/// Every identifier of Lua code, comments left out.
fn identifiers(code: &str) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for line in code.lines() {
        let line = line.split("--").next().unwrap_or_default();
        for word in line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
                ids.insert(word.to_string());
            }
        }
    }
    ids
}

fn read(path: &Path) -> Result<String, String> {
    fs::read_to_string(path).map_err(|e| format!("lua: cannot read {}: {e}", path.display()))
}
