//! Bearer-token authentication for `/v1` routes, from an `--api-keys` file.
//!
//! File format: one key per line, optionally followed by its quota of API calls
//! (`KEY` or `KEY 10000`); blank lines and lines starting with `#` are ignored.

use std::collections::HashMap;
use std::path::Path;

/// The keys a server accepts, with their quotas.
#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    /// `None`: authentication is off (every request is anonymous).
    keys: Option<HashMap<String, Option<u64>>>,
}

/// The authenticated key of a request (`None` when authentication is off).
#[derive(Debug, Clone)]
pub struct Caller(pub Option<String>);

impl ApiKeys {
    /// No authentication.
    pub fn open() -> Self {
        Self { keys: None }
    }

    /// Reads a keys file; errors name the file and line.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read API keys file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("{}:{e}", path.display()))
    }

    /// Parses the keys file format.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut keys = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            let key = parts.next().expect("non-empty line");
            let quota = match parts.next() {
                None => None,
                Some(q) => Some(
                    q.parse::<u64>()
                        .map_err(|_| format!("{}: quota `{q}` is not a whole number", i + 1))?,
                ),
            };
            if parts.next().is_some() {
                return Err(format!("{}: expected `KEY` or `KEY QUOTA`", i + 1));
            }
            if keys.insert(key.to_string(), quota).is_some() {
                return Err(format!("{}: duplicate key", i + 1));
            }
        }
        if keys.is_empty() {
            return Err(" no keys in the file".into());
        }
        Ok(Self { keys: Some(keys) })
    }

    /// Quotas of the keys that have one.
    pub fn quotas(&self) -> HashMap<String, u64> {
        self.keys
            .iter()
            .flatten()
            .filter_map(|(k, q)| q.map(|q| (k.clone(), q)))
            .collect()
    }

    /// Who is calling, given the `Authorization` header; `Err` is the reason for a 401.
    pub fn authenticate(&self, header: Option<&str>) -> Result<Caller, &'static str> {
        let Some(keys) = &self.keys else {
            return Ok(Caller(None));
        };
        let token = header
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or("missing `Authorization: Bearer KEY` header")?;
        if keys.contains_key(token) {
            Ok(Caller(Some(token.to_string())))
        } else {
            Err("unknown API key")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_file_with_quotas_and_errors() {
        let k = ApiKeys::parse("# team keys\nalpha\nbeta 100\n\n").unwrap();
        assert_eq!(k.quotas(), HashMap::from([("beta".to_string(), 100)]));
        assert_eq!(
            k.authenticate(Some("Bearer alpha")).unwrap().0.as_deref(),
            Some("alpha")
        );
        assert!(k.authenticate(Some("Bearer gamma")).is_err());
        assert!(k.authenticate(Some("alpha")).is_err());
        assert!(k.authenticate(None).is_err());
        assert!(ApiKeys::parse("a x").unwrap_err().contains("1: quota `x`"));
        assert!(ApiKeys::parse("a\na")
            .unwrap_err()
            .contains("2: duplicate key"));
        assert!(ApiKeys::parse("# nothing").unwrap_err().contains("no keys"));
        assert!(ApiKeys::open().authenticate(None).unwrap().0.is_none());
    }
}
