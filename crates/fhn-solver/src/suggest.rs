//! Clearer messages for unknown fields in JSON files: serde says "unknown field `x`,
//! expected one of `a`, `b`"; we name the closest valid field.

/// Rewrites a serde_json error about an unknown field into "unknown field `n_sample`
/// (line 5, column 14); did you mean `n_samples`? (valid fields: ...)"; other errors are
/// returned as serde wrote them.
pub(crate) fn explain_json_error(error: &serde_json::Error) -> String {
    let text = error.to_string();
    let Some(rest) = text.strip_prefix("unknown field `") else {
        return text;
    };
    let Some((unknown, rest)) = rest.split_once('`') else {
        return text;
    };
    let valid: Vec<&str> = rest
        .split(" at line ")
        .next()
        .unwrap_or("")
        .split('`')
        .skip(1)
        .step_by(2)
        .collect();
    let place = format!("line {}, column {}", error.line(), error.column());
    let list = valid
        .iter()
        .map(|v| format!("`{v}`"))
        .collect::<Vec<_>>()
        .join(", ");
    match closest(unknown, &valid) {
        Some(best) => {
            format!("unknown field `{unknown}` ({place}); did you mean `{best}`? (valid fields: {list})")
        }
        None => format!("unknown field `{unknown}` ({place}); valid fields: {list}"),
    }
}

/// The candidate nearest to `word` in edit distance, if it is near enough to be a typo
/// (at most a third of the word's length, and at least 2).
fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(2);
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance (insertions, deletions, substitutions) between two strings.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_and_suggestions() {
        assert_eq!(edit_distance("n_sample", "n_samples"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(closest("n_sample", &["x0", "n_samples"]), Some("n_samples"));
        assert_eq!(closest("zzzzzz", &["x0", "n_samples"]), None);
    }
}
