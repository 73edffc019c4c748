//! Content moderation: a prompt that matches a rule fails with UNSAFE_CONTENT before any work.
//!
//! Rules are plain terms (matched as whole words, case-insensitively) or `/regex/` lines. One
//! `RegexSet` judges all rules in a single pass over the prompt.

use regex::{RegexSet, RegexSetBuilder};

/// The rules used when no terms file is configured: a small, conservative list.
const BUILTIN: &str = "\
nsfw
nude
nudity
porn
pornographic
gore
beheading
child abuse
/\\bsexual(ly)?\\s+explicit\\b/
";

/// A compiled set of moderation rules.
#[derive(Debug, Clone)]
pub struct Moderator {
    rules: RegexSet,
    sources: Vec<String>,
}

/// Why a prompt was refused: which rule matched (for logs, never shown to the client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    pub rule: String,
}

impl Moderator {
    pub fn builtin() -> Self {
        Self::from_rules(BUILTIN).expect("the built-in rules compile")
    }

    /// Compiles one rule per line; blank lines and `#` comments are skipped.
    pub fn from_rules(text: &str) -> Result<Self, String> {
        let mut patterns = Vec::new();
        let mut sources = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let pattern = match line.strip_prefix('/').and_then(|l| l.strip_suffix('/')) {
                Some(re) if !re.is_empty() => {
                    regex::Regex::new(re).map_err(|e| format!("line {}: {e}", n + 1))?;
                    re.to_owned()
                }
                _ => format!(r"\b{}\b", regex::escape(line)),
            };
            patterns.push(pattern);
            sources.push(line.to_owned());
        }
        let rules = RegexSetBuilder::new(&patterns)
            .case_insensitive(true)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self { rules, sources })
    }

    pub fn check(&self, prompt: &str) -> Result<(), Blocked> {
        match self.rules.matches(prompt).iter().next() {
            Some(i) => Err(Blocked {
                rule: self.sources[i].clone(),
            }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_match_whole_words_case_insensitively() {
        let m = Moderator::from_rules("gore\n# comment\n\nchild abuse").unwrap();
        assert!(m.check("A GORE scene").is_err());
        assert!(m.check("scenes of child  abuse").is_ok());
        assert!(m.check("scenes of Child Abuse").is_err());
        assert!(m.check("Al Gore gives a speech").is_err());
        assert!(m.check("a gorest of pines").is_ok());
    }

    #[test]
    fn regex_rules_work_and_bad_ones_are_reported() {
        let m = Moderator::from_rules("/b[a4]d\\s*word/").unwrap();
        assert_eq!(
            m.check("say b4d  word now").unwrap_err().rule,
            "/b[a4]d\\s*word/"
        );
        assert!(m.check("a good word").is_ok());
        assert!(
            Moderator::from_rules("/(unclosed/")
                .unwrap_err()
                .contains("line 1")
        );
    }

    #[test]
    fn builtin_list_blocks_nsfw() {
        assert!(Moderator::builtin().check("an NSFW clip of a cat").is_err());
        assert!(
            Moderator::builtin()
                .check("A sunset over mountains")
                .is_ok()
        );
    }
}
