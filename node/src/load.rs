//! The learner's config as a command sees it: the file, overridden by the
//! `POSTERIOR_LEARNER__*` environment variables, overridden by the flags
//! of `learner run`; split into the learner's own config and the embedded
//! param-server's (`[param_server]`), each read by its strict parser, and
//! checked together — all before anything is opened or bound. An error
//! names the key, and the variable or flag when one of them caused it.
//! The variables' syntax is [`posterior_learner::overrides`]'s:
//! `POSTERIOR_LEARNER__STATE__DIR=/var/lib/posterior` sets `state.dir`,
//! `POSTERIOR_LEARNER__PARAM_SERVER__LISTEN=0.0.0.0:50051` the embedded
//! server's `listen`, `POSTERIOR_LEARNER__VERSIONS__0__ALPHA0=2` the first
//! version's `alpha0`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use posterior_learner::config::Config;
use posterior_learner::overrides::{self, LoadError, Override};
use posterior_param_server::config::Config as ServerConfig;

use crate::embedded;

/// Prefix of the environment variables that override the learner's
/// config. Its own (not `POSTERIOR_`): the CLI's `POSTERIOR_TOKEN` and the
/// tests' `POSTERIOR_FAILPOINT` share the environment, and an unknown key
/// under the prefix is an error.
pub const ENV_PREFIX: &str = "POSTERIOR_LEARNER__";

/// The learner's config and the embedded param-server's, if it has one.
pub type Loaded = (Config, Option<ServerConfig>);

/// Flags of `learner run` that override keys of the config file.
#[derive(Debug, Default, clap::Args)]
pub struct RunFlags {
    /// Overrides `state.dir`.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Overrides `param_server.listen` (a config without a
    /// `[param_server]` table then embeds a server with default settings).
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<String>,
}

impl RunFlags {
    /// The overrides the flags give, applied after the variables'.
    fn overrides(&self) -> Vec<Override> {
        let mut overrides = Vec::new();
        if let Some(dir) = &self.state_dir {
            let dir = dir.to_string_lossy().into_owned();
            overrides.push(Override::flag("--state-dir", "state.dir", dir.into()));
        }
        if let Some(listen) = &self.listen {
            let listen = listen.as_str().into();
            overrides.push(Override::flag("--listen", "param_server.listen", listen));
        }
        overrides
    }
}

/// The config file at `path` with the variables, then `flags`, applied.
pub fn load_with_flags(path: &Path, flags: &RunFlags) -> Result<Loaded> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let mut overrides = overrides::from_env(ENV_PREFIX)?;
    overrides.extend(flags.overrides());
    parse(&text, &overrides).with_context(|| format!("invalid config {}", path.display()))
}

/// The config file at `path` with the variables applied.
pub fn load_with_server(path: &Path) -> Result<Loaded> {
    load_with_flags(path, &RunFlags::default())
}

/// The learner's config (an embedded server's table is checked, then
/// ignored).
pub fn load(path: &Path) -> Result<Config> {
    load_with_server(path).map(|(config, _)| config)
}

/// Parses and checks a config file's `text` with `overrides` applied.
pub fn parse(text: &str, overrides: &[Override]) -> Result<Loaded, LoadError> {
    let file = overrides::parse_document(text)?;
    overrides::load(&file, overrides, |table| {
        let (learner, server) = embedded::split_config(table)?;
        let text = toml::to_string(&learner).map_err(|e| format!("config: {e}"))?;
        let config = Config::from_toml(&text).map_err(|e| e.to_string())?;
        Ok::<_, String>((config, server))
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a panic is the test's failure report")]

    use super::*;

    /// The example configs: every `*.toml` of the workspace's `config/`.
    fn example_files() -> Vec<PathBuf> {
        // Read when the test runs: a build reused from another checkout
        // has that checkout's directory compiled in.
        let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
            .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
        let dir = manifest.join("../config");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
            .collect();
        files.sort();
        files
    }

    /// A binary's config parser.
    type Loader = fn(&str) -> Result<(), String>;

    /// How each binary reads a config file. A file of `config/` must be
    /// valid for exactly one of them; a binary with a config of its own
    /// (e.g. `learner quickstart`) adds its loader here.
    const LOADERS: [(&str, Loader); 3] = [
        ("learner", |text| {
            parse(text, &[]).map(drop).map_err(|e| e.to_string())
        }),
        ("learner quickstart", |text| {
            let (quickstart, rest) =
                crate::quickstart::split_config(text).map_err(|e| format!("{e:#}"))?;
            let (config, _) = parse(&rest, &[]).map_err(|e| e.to_string())?;
            quickstart
                .validate(&config)
                .map(drop)
                .map_err(|e| e.to_string())
        }),
        ("param-server", |text| {
            ServerConfig::load(text, &[])
                .map(drop)
                .map_err(|e| e.to_string())
        }),
    ];

    #[test]
    fn every_example_config_is_valid_for_exactly_one_binary() {
        let files = example_files();
        assert!(files.len() >= 3, "{files:?}");
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            let results: Vec<_> = LOADERS
                .iter()
                .map(|(binary, load)| (binary, load(&text)))
                .collect();
            let valid = results.iter().filter(|(_, r)| r.is_ok()).count();
            assert_eq!(valid, 1, "{}: {results:#?}", file.display());
        }
    }

    const FILE: &str = r#"
[state]
dir = "/tmp/state"

[source]
kind = "file"
path = "samples.jsonl"
format = "jsonl"

[dead_letter]
path = "dead.jsonl"

[[versions]]
name = "ctr"
model = "beta"
reward_label = "click"

[param_server]
listen = "127.0.0.1:0"
"#;

    fn env(pairs: &[(&str, &str)]) -> Vec<Override> {
        let vars = pairs.iter().map(|(k, v)| ((*k).into(), (*v).into()));
        overrides::from_vars(ENV_PREFIX, vars).unwrap()
    }

    #[test]
    fn variables_and_flags_set_nested_keys_of_both_configs() {
        let mut overrides = env(&[
            ("POSTERIOR_LEARNER__STATE__CHECKPOINT_EVERY_RECORDS", "7"),
            ("POSTERIOR_LEARNER__PARAM_SERVER__LIMITS__WORK_SLOTS", "3"),
            ("POSTERIOR_LEARNER__VERSIONS__0__ALPHA0", "2.5"),
            ("POSTERIOR_LEARNER__STATE__DIR", "/from/env"),
        ]);
        let flags = RunFlags {
            state_dir: Some("/from/flag".into()),
            listen: Some("127.0.0.1:7".into()),
        };
        overrides.extend(flags.overrides());
        let (config, server) = parse(FILE, &overrides).unwrap();
        let server = server.unwrap();
        assert_eq!(config.state.checkpoint_every_records, 7);
        assert_eq!(config.state.dir, Path::new("/from/flag"));
        assert_eq!(config.versions[0].alpha0, 2.5);
        assert_eq!(
            (server.limits.work_slots, server.listen.as_str()),
            (3, "127.0.0.1:7")
        );
    }

    #[test]
    fn listen_embeds_a_server_in_a_config_without_one() {
        let text = FILE.replace("[param_server]\nlisten = \"127.0.0.1:0\"\n", "");
        assert!(parse(&text, &[]).unwrap().1.is_none());
        let flags = RunFlags {
            listen: Some("127.0.0.1:0".into()),
            ..RunFlags::default()
        };
        let (_, server) = parse(&text, &flags.overrides()).unwrap();
        assert_eq!(server.unwrap().listen, "127.0.0.1:0");
    }

    #[test]
    fn a_bad_override_is_refused_naming_the_variable_and_the_key() {
        let cases = [
            (
                (
                    "POSTERIOR_LEARNER__STATE__CHECKPOINT_EVERY_RECORDS",
                    "often",
                ),
                "state.checkpoint_every_records: invalid type",
            ),
            (
                ("POSTERIOR_LEARNER__STATE__CHECKPOINT_EVERY_RECORDS", "0"),
                "state.checkpoint_every_records: must be >= 1",
            ),
            (
                ("POSTERIOR_LEARNER__STATE__DIRECTORY", "/x"),
                "state.directory: unknown field `directory`",
            ),
            (
                ("POSTERIOR_LEARNER__PARAM_SERVER__LISEN", "127.0.0.1:1"),
                "param_server.lisen: unknown field `lisen`",
            ),
            (
                ("POSTERIOR_LEARNER__PARAM_SERVER__LISTEN", "localhost"),
                "param_server.listen: invalid socket address",
            ),
            (
                ("POSTERIOR_LEARNER__VERSIONS__0__ALPHA0", "-1"),
                "versions[0]",
            ),
        ];
        for ((var, value), needle) in cases {
            let overrides = env(&[("POSTERIOR_LEARNER__STATE__DIR", "/fine"), (var, value)]);
            let err = parse(FILE, &overrides).unwrap_err().to_string();
            assert!(err.starts_with(&format!("{var}: ")), "{err} lacks {var}");
            assert!(err.contains(needle), "{err} lacks {needle}");
        }
    }

    #[test]
    fn an_error_of_the_file_names_its_key() {
        let cases = [
            (
                FILE.replace("[dead_letter]", "[dead_letter]\ncolour = 1"),
                "colour",
            ),
            (
                FILE.replace("dir = \"/tmp/state\"", "dir = 5"),
                "state.dir: invalid type",
            ),
            (
                FILE.replace(
                    "listen = \"127.0.0.1:0\"",
                    "listen = \"127.0.0.1:0\"\n[param_server.feed.kafka]\nbrokers = \"b\"",
                ),
                "param_server.feed",
            ),
        ];
        for (text, needle) in cases {
            let err = parse(&text, &[]).unwrap_err();
            assert!(matches!(err, LoadError::Config(_)), "{err:?}");
            assert!(err.to_string().contains(needle), "{err} lacks {needle}");
        }
    }
}
