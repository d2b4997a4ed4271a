//! Strict configuration parsing and atomic file writes.
//!
//! - [`parse_strict`] deserialises a JSON value into a configuration type whose unknown
//!   fields are refused, and turns serde's "unknown field `x`, expected one of …" into a
//!   message that names the type and suggests the closest valid field
//!   ([`suggest_field`], by edit distance).
//! - [`write_atomic`] and [`persist_with`] write a file to a temporary sibling, flush and
//!   sync it, then rename it over the destination: a reader sees the old file or the new
//!   one, never a half-written one, and a failed write leaves the old file intact.

use std::io::Write;
use std::path::Path;

use serde::de::DeserializeOwned;

use crate::error::{EvalError, Result};

/// The Levenshtein distance between two strings (in `char`s).
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

/// The candidate closest to `unknown`, if one is close enough to be a likely typo (at
/// most a third of the longer name's characters differ).
pub fn closest<'a>(unknown: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(unknown, c), *c))
        .min_by_key(|(d, _)| *d)
        .filter(|(d, c)| *d <= unknown.chars().count().max(c.chars().count()) / 3 + 1)
        .map(|(_, c)| c)
}

/// Serde's "unknown field `x`, expected one of `a`, `b`" (or "expected `a`") rewritten as
/// "unknown field `x`; did you mean `a`? (expected one of `a`, `b`)"; any other message is
/// returned unchanged.
pub fn suggest_field(message: &str) -> String {
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message.to_string();
    };
    let Some((unknown, tail)) = rest.split_once('`') else {
        return message.to_string();
    };
    // serde_json appends " at line L column C"; keep it at the end of the new message.
    let (tail, position) = match tail.rfind(" at line ") {
        Some(at) => (&tail[..at], &tail[at..]),
        None => (tail, ""),
    };
    let expected = tail.trim_start_matches(", ").trim();
    let valid: Vec<&str> = expected
        .split('`')
        .enumerate()
        .filter(|(k, _)| k % 2 == 1)
        .map(|(_, name)| name)
        .collect();
    match closest(unknown, &valid) {
        Some(best) => {
            format!("unknown field `{unknown}`; did you mean `{best}`? ({expected}){position}")
        }
        None => format!("unknown field `{unknown}` ({expected}){position}"),
    }
}

/// Deserialises `value` as a `what` (named in errors, e.g. "EvalConfig at `eval`"), with
/// unknown fields explained by [`suggest_field`].
pub fn parse_strict<T: DeserializeOwned>(value: &serde_json::Value, what: &str) -> Result<T> {
    // The path names the field inside nested values (`eval.eval_batch`), which serde's own
    // message for a wrong type or value leaves out.
    serde_path_to_error::deserialize(value.clone()).map_err(|e| {
        let path = e.path().to_string();
        let reason = suggest_field(&e.inner().to_string());
        EvalError::Config {
            what: what.to_string(),
            // An unknown field's message already names it.
            reason: if path.is_empty() || path == "." || reason.starts_with("unknown field") {
                reason
            } else {
                format!("field `{path}`: {reason}")
            },
        }
    })
}

/// Writes `bytes` to `path` atomically (temporary sibling, flush, sync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    persist_with(path, |file, _| {
        file.write_all(bytes)
            .and_then(|()| file.flush())
            .map_err(|e| EvalError::io(path, e))
    })
}

/// Creates a temporary sibling of `path` (same extension, so that writers choosing a format
/// by extension still work), lets `fill` write it (through the open file or its path),
/// syncs it and renames it to `path`. If `fill` fails the temporary file is removed and
/// `path` is left as it was.
pub fn persist_with(
    path: &Path,
    fill: impl FnOnce(&mut std::fs::File, &Path) -> Result<()>,
) -> Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let suffix = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    let mut tmp = fhn_solver::atomic::temp_file_in(parent, ".tmp-", &suffix)
        .map_err(|e| EvalError::io(path, e))?;
    let tmp_path = tmp.path().to_path_buf();
    fill(tmp.as_file_mut(), &tmp_path)?;
    // A writer that went through the path replaced the file: sync what is there now.
    std::fs::File::open(&tmp_path)
        .and_then(|f| f.sync_all())
        .map_err(|e| EvalError::io(path, e))?;
    tmp.persist(path)
        .map_err(|e| EvalError::io(path, e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("repeats", "repeats"), 0);
    }

    #[test]
    fn serde_messages_get_a_suggestion() {
        let m = "unknown field `equivariance_sample`, expected one of `equivariance_samples`, `map_samples` at line 3 column 25";
        assert_eq!(
            suggest_field(m),
            "unknown field `equivariance_sample`; did you mean `equivariance_samples`? (expected one of `equivariance_samples`, `map_samples`) at line 3 column 25"
        );
        let far = "unknown field `zzzzzzzz`, expected `warmup`";
        assert_eq!(
            suggest_field(far),
            "unknown field `zzzzzzzz` (expected `warmup`)"
        );
        assert_eq!(
            suggest_field("missing field `seed`"),
            "missing field `seed`"
        );
    }
}
