//! The host side of `wasi:config/store@0.2.0-rc.1`: a plugin's
//! `[plugin.config]`, resolved when it loads, and the secrets in it kept out
//! of everything the host writes.

use std::collections::BTreeMap;

use super::bindings::wasi::config::store;
use super::state::HostState;
use crate::config::ConfigValue;

/// A plugin's configuration as it reads it, and which values are secret.
#[derive(Default)]
pub struct ConfigValues {
    values: Vec<(String, String)>,
    /// Values read from the environment or files, longest first (so that
    /// a secret containing another is hidden whole).
    secrets: Vec<String>,
}

/// What stands in for a secret in the host's logs, failure reasons and
/// dead letters.
pub const HIDDEN: &str = "[secret]";

impl ConfigValues {
    /// Reads every value: plain ones as written, secrets from the
    /// environment or their file. The error names the key and the source,
    /// never a value.
    pub fn resolve(config: &BTreeMap<String, ConfigValue>) -> anyhow::Result<ConfigValues> {
        let mut out = ConfigValues::default();
        for (key, value) in config {
            let text = match value {
                ConfigValue::Plain(text) => text.clone(),
                ConfigValue::Env { env } => {
                    let secret = std::env::var(env).map_err(|e| {
                        anyhow::anyhow!("config key {key:?}: environment variable {env:?}: {e}")
                    })?;
                    out.secrets.push(secret.clone());
                    secret
                }
                ConfigValue::File { file } => {
                    let mut secret = std::fs::read_to_string(file).map_err(|e| {
                        anyhow::anyhow!("config key {key:?}: cannot read {}: {e}", file.display())
                    })?;
                    if secret.ends_with('\n') {
                        secret.pop();
                        if secret.ends_with('\r') {
                            secret.pop();
                        }
                    }
                    out.secrets.push(secret.clone());
                    secret
                }
            };
            out.values.push((key.clone(), text));
        }
        out.secrets.retain(|s| !s.is_empty());
        out.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Ok(out)
    }

    /// `text` with every secret replaced by [`HIDDEN`]. Nothing is copied
    /// when there are no secrets.
    pub fn scrub(&self, text: String) -> String {
        if self.secrets.iter().all(|s| !text.contains(s.as_str())) {
            return text;
        }
        let mut text = text;
        for secret in &self.secrets {
            text = text.replace(secret.as_str(), HIDDEN);
        }
        text
    }
}

impl store::Host for HostState {
    fn get(&mut self, key: String) -> Result<Option<String>, store::Error> {
        Ok(self
            .config
            .values
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.clone()))
    }

    fn get_all(&mut self) -> Result<Vec<(String, String)>, store::Error> {
        Ok(self.config.values.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_read_at_load_and_hidden_from_text() {
        let dir = std::env::temp_dir().join(format!("runnel-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "s3cr3t-from-file\n").unwrap();
        let config = BTreeMap::from([
            ("greeting".to_string(), ConfigValue::Plain("hello".into())),
            (
                "token".to_string(),
                ConfigValue::File { file: file.clone() },
            ),
            (
                "home".to_string(),
                ConfigValue::Env {
                    env: "RUNNEL_TEST_NO_SUCH_VARIABLE".into(),
                },
            ),
        ]);
        let err = ConfigValues::resolve(&config).err().unwrap().to_string();
        assert!(
            err.contains(
                r#"config key "home": environment variable "RUNNEL_TEST_NO_SUCH_VARIABLE""#
            ),
            "{err}"
        );
        let mut config = config;
        config.remove("home");
        let values = ConfigValues::resolve(&config).unwrap();
        assert_eq!(
            values.values,
            vec![
                ("greeting".to_string(), "hello".to_string()),
                ("token".to_string(), "s3cr3t-from-file".to_string()),
            ]
        );
        assert_eq!(
            values.scrub("bad token s3cr3t-from-file, said hello".into()),
            "bad token [secret], said hello",
            "plain values are not secret"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
