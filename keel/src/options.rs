//! Cloud Hypervisor-style option lists: `--disk path=/img,readonly=on,id=root`.
//!
//! A list is `key=value` pairs separated by commas. Every key must be one the flag knows and
//! appear once; a value is checked when it is taken. Errors name the flag and the key. A flag
//! may have a default key, so `--cpus 2` means `--cpus boot=2`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// A bad command-line option: which flag, which key, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag}: {message}")]
pub struct OptionError {
    /// The flag (`--disk`).
    pub flag: &'static str,
    /// What is wrong, naming the key.
    pub message: String,
}

/// A parsed option list; take values with [`OptionList::take`] and friends.
#[derive(Debug)]
pub struct OptionList {
    flag: &'static str,
    values: BTreeMap<String, String>,
}

impl OptionList {
    /// Parses `text` for `flag`, accepting only `known` keys. A bare value (no `=`) in first
    /// place is the value of `default_key`, when the flag has one.
    pub fn parse(
        flag: &'static str,
        text: &str,
        known: &[&'static str],
        default_key: Option<&'static str>,
    ) -> Result<Self, OptionError> {
        let error = |message: String| OptionError { flag, message };
        let mut values = BTreeMap::new();
        if text.trim().is_empty() {
            return Err(error("is empty".into()));
        }
        for (index, item) in text.split(',').enumerate() {
            let (key, value) = match item.split_once('=') {
                Some((key, value)) => (key.trim(), value),
                None => match default_key {
                    Some(key) if index == 0 => (key, item),
                    _ => {
                        return Err(error(format!(
                            "`{item}` is not key=value (known keys: {})",
                            known.join(", ")
                        )))
                    }
                },
            };
            if !known.contains(&key) {
                return Err(error(format!(
                    "unknown key `{key}` (known keys: {})",
                    known.join(", ")
                )));
            }
            if values.insert(key.to_string(), value.to_string()).is_some() {
                return Err(error(format!("key `{key}` is given twice")));
            }
        }
        Ok(OptionList { flag, values })
    }

    fn error(&self, key: &str, message: impl fmt::Display) -> OptionError {
        OptionError {
            flag: self.flag,
            message: format!("key `{key}`: {message}"),
        }
    }

    /// The value of `key`, if given; an empty value is an error.
    pub fn take(&mut self, key: &str) -> Result<Option<String>, OptionError> {
        match self.values.remove(key) {
            Some(value) if value.is_empty() => Err(self.error(key, "has no value")),
            other => Ok(other),
        }
    }

    /// The value of `key`, which must be given.
    pub fn require(&mut self, key: &str) -> Result<String, OptionError> {
        self.take(key)?
            .ok_or_else(|| self.error(key, "is required"))
    }

    /// The error for `key`, which is missing: `why`.
    pub fn missing(&self, key: &str, why: &str) -> OptionError {
        self.error(key, why)
    }

    /// `on`/`off` (also `true`/`false`), `default` when absent.
    pub fn flag_value(&mut self, key: &str, default: bool) -> Result<bool, OptionError> {
        match self.take(key)?.as_deref() {
            None => Ok(default),
            Some("on" | "true") => Ok(true),
            Some("off" | "false") => Ok(false),
            Some(other) => Err(self.error(key, format!("`{other}` is not on or off"))),
        }
    }

    /// The value of `key` parsed as `T`, if given.
    pub fn parsed<T: FromStr>(&mut self, key: &str, what: &str) -> Result<Option<T>, OptionError>
    where
        T::Err: fmt::Display,
    {
        match self.take(key)? {
            None => Ok(None),
            Some(text) => text
                .parse()
                .map(Some)
                .map_err(|err| self.error(key, format!("`{text}` is not {what}: {err}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_taken_by_key_and_checked() {
        let mut list = OptionList::parse(
            "--disk",
            "path=/img,readonly=on,id=root",
            &["path", "readonly", "direct", "id"],
            Some("path"),
        )
        .unwrap();
        assert_eq!(list.require("path").unwrap(), "/img");
        assert!(list.flag_value("readonly", false).unwrap());
        assert!(!list.flag_value("direct", false).unwrap());
        assert_eq!(list.take("id").unwrap().as_deref(), Some("root"));
    }

    #[test]
    fn a_bare_first_value_belongs_to_the_default_key() {
        let mut list = OptionList::parse("--cpus", "4", &["boot"], Some("boot")).unwrap();
        assert_eq!(list.parsed::<u32>("boot", "a number").unwrap(), Some(4));
        let err = OptionList::parse("--cpus", "boot=1,2", &["boot"], Some("boot")).unwrap_err();
        assert!(err.to_string().contains("`2` is not key=value"), "{err}");
    }

    #[test]
    fn errors_name_the_flag_and_the_key() {
        let err = OptionList::parse("--disk", "path=/a,size=3", &["path"], None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--disk: unknown key `size` (known keys: path)"
        );
        let err = OptionList::parse("--disk", "path=/a,path=/b", &["path"], None).unwrap_err();
        assert_eq!(err.to_string(), "--disk: key `path` is given twice");
        let mut list = OptionList::parse("--disk", "readonly=maybe", &["readonly"], None).unwrap();
        let err = list.flag_value("readonly", false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--disk: key `readonly`: `maybe` is not on or off"
        );
        let mut list = OptionList::parse("--disk", "path=", &["path"], None).unwrap();
        assert_eq!(
            list.require("path").unwrap_err().to_string(),
            "--disk: key `path`: has no value"
        );
        let mut list = OptionList::parse("--cpus", "boot=two", &["boot"], None).unwrap();
        let err = list.parsed::<u32>("boot", "a number").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("--cpus: key `boot`: `two` is not a number"),
            "{err}"
        );
        assert!(OptionList::parse("--rng", "", &["id"], None).is_err());
    }
}
