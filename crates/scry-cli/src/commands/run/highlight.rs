//! Colours for pdb's listings in the terminal (`scry run`, `scry repl`): line numbers dimmed, the
//! current line's marker bright, keywords, strings, numbers and comments of the code coloured.

const KEYWORDS: &[&str] = &[
    "False", "None", "True", "and", "as", "assert", "async", "await", "break", "class", "continue",
    "def", "del", "elif", "else", "except", "finally", "for", "from", "global", "if", "import",
    "in", "is", "lambda", "nonlocal", "not", "or", "pass", "raise", "return", "try", "while",
    "with", "yield",
];

/// ANSI colours for a line of a pdb listing (`  12  ->    code`); other lines unchanged.
pub fn highlight_line(line: &str) -> String {
    let body = line.trim_end_matches('\n');
    let trimmed = body.trim_start();
    let digits = trimmed.chars().take_while(char::is_ascii_digit).count();
    if digits == 0 || !trimmed[digits..].starts_with(' ') {
        return line.to_owned();
    }
    let prefix_len = body.len() - trimmed.len() + digits;
    let (prefix, rest) = body.split_at(prefix_len);
    // pdb: two columns of markers (B, ->, >>) then a tab or spaces, then the code.
    let marker_end = rest
        .char_indices()
        .find(|(_, c)| *c == '\t')
        .map(|(i, _)| i + 1)
        .unwrap_or_else(|| rest.len().min(5));
    let (marker, code) = rest.split_at(marker_end.min(rest.len()));
    let mut out = format!("\x1b[2m{prefix}\x1b[0m");
    if marker.contains("->") || marker.contains(">>") {
        out.push_str(&format!("\x1b[1;33m{marker}\x1b[0m"));
    } else {
        out.push_str(marker);
    }
    out.push_str(&highlight_code(code));
    if line.ends_with('\n') {
        out.push('\n');
    }
    out
}

fn highlight_code(code: &str) -> String {
    let chars: Vec<char> = code.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '#' {
            let rest: String = chars[i..].iter().collect();
            out.push_str(&format!("\x1b[90m{rest}\x1b[0m"));
            break;
        }
        if c == '"' || c == '\'' {
            let mut j = i + 1;
            while j < chars.len() && chars[j] != c {
                if chars[j] == '\\' {
                    j += 1;
                }
                j += 1;
            }
            let end = (j + 1).min(chars.len());
            let s: String = chars[i..end].iter().collect();
            out.push_str(&format!("\x1b[32m{s}\x1b[0m"));
            i = end;
            continue;
        }
        if c.is_alphabetic() || c == '_' {
            let mut j = i;
            while j < chars.len() && (chars[j].is_alphanumeric() || chars[j] == '_') {
                j += 1;
            }
            let w: String = chars[i..j].iter().collect();
            if KEYWORDS.contains(&w.as_str()) {
                out.push_str(&format!("\x1b[1;34m{w}\x1b[0m"));
            } else {
                out.push_str(&w);
            }
            i = j;
            continue;
        }
        if c.is_ascii_digit() {
            let mut j = i;
            while j < chars.len() && (chars[j].is_ascii_alphanumeric() || chars[j] == '.') {
                j += 1;
            }
            let w: String = chars[i..j].iter().collect();
            out.push_str(&format!("\x1b[36m{w}\x1b[0m"));
            i = j;
            continue;
        }
        out.push(c);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_lines_are_highlighted_and_others_left_alone() {
        let l = highlight_line("  3  ->\tdef f(x):  # hi\n");
        assert!(l.contains("\x1b[1;34mdef\x1b[0m"), "{l:?}");
        assert!(l.contains("\x1b[90m# hi"), "{l:?}");
        assert!(l.ends_with('\n'));
        assert_eq!(highlight_line("> /x.py(3)f()\n"), "> /x.py(3)f()\n");
    }
}
