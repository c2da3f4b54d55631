//! `--config FILE`, an environment variable for every setting, and
//! `--print-config`: where each setting comes from.
//!
//! A setting is taken from, in order: its flag on the command line, its
//! environment variable, the TOML file `--config` names, its default. The
//! file holds one `key = value` per setting, its key the flag's long name:
//! `listen = "127.0.0.1:8443"`, `max-message-bytes = 65536`,
//! `stun-server = ["stun:a.example:3478"]`, `tls-self-signed = true`.
//!
//! The file's values are handed to clap as if they were flags, ahead of
//! the real ones, for the settings that neither the command line nor the
//! environment gives. clap then checks them as it checks flags (each
//! value, and which settings need or exclude which), and nothing after
//! parsing can tell a value from the file from a flag's.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command, CommandFactory, FromArgMatches};

use super::Cli;

/// Every setting's environment variable starts with this.
const ENV_PREFIX: &str = "SIGNALING_";

/// Arguments that are actions rather than settings: they have no key in
/// the file and get no environment variable of their own.
const NOT_SETTINGS: [&str; 4] = ["help", "version", "config", "print_config"];

/// Whether `arg` is a setting the file and the environment may give.
fn is_setting(arg: &Arg) -> bool {
    !arg.is_hide_set() && arg.get_long().is_some() && !NOT_SETTINGS.contains(&arg.get_id().as_str())
}

/// A setting's environment variable, unless it has one of its own:
/// `SIGNALING_` and the flag's long name in capitals, with `_` for `-`.
pub fn env_name(long: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        long.to_ascii_uppercase().replace('-', "_")
    )
}

/// The server's command line, with an environment variable for every
/// setting (comma-separated for those that take several values; for a
/// switch, true/false, 1/0, yes/no or on/off).
pub fn command() -> Command {
    Cli::command().mut_args(|arg| {
        if !is_setting(&arg) {
            return arg;
        }
        // A switch's variable may say 1/0, yes/no, on/off as well as
        // true/false.
        let arg = if matches!(arg.get_action(), ArgAction::SetTrue) {
            arg.value_parser(clap::builder::BoolishValueParser::new())
        } else {
            arg
        };
        if arg.get_env().is_some() {
            return arg;
        }
        let name = arg.get_long().map(env_name);
        let several = matches!(arg.get_action(), ArgAction::Append);
        let arg = match name {
            Some(name) => arg.env(name),
            None => arg,
        };
        if several && arg.get_value_delimiter().is_none() {
            arg.value_delimiter(',')
        } else {
            arg
        }
    })
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Flag,
    /// This environment variable.
    Environment(String),
    File,
    Default,
    /// Not given, and no default.
    Unset,
}

/// The command line, read with the environment and the `--config` file.
#[derive(Debug)]
pub struct Settings {
    pub cli: Cli,
    matches: ArgMatches,
    /// The ids of the settings the file gave.
    from_file: BTreeSet<String>,
}

/// Why the settings could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// clap's own (a bad flag, `--help`, `--version`): it prints it.
    #[error("{0}")]
    Flags(#[from] clap::Error),
    #[error("--config {}: {why}", path.display())]
    File { path: PathBuf, why: String },
}

impl SettingsError {
    fn file(path: &Path, why: impl Into<String>) -> Self {
        Self::File {
            path: path.to_owned(),
            why: why.into(),
        }
    }
}

/// Reads the settings from `args` (the program's name first), the
/// environment, and the file of `--config` (or `SIGNALING_CONFIG`).
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Settings, SettingsError> {
    let args: Vec<OsString> = args.into_iter().collect();
    let command = command();
    // What the command line and the environment give, read leniently: a
    // flag that needs a setting the file gives is not an error yet.
    let given = command
        .clone()
        .ignore_errors(true)
        .try_get_matches_from(&args)?;
    let Some(path) = given.get_one::<PathBuf>("config").cloned() else {
        let matches = command.try_get_matches_from(&args)?;
        return Settings::new(matches, BTreeSet::new());
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| SettingsError::file(&path, format!("cannot read it: {e}")))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| SettingsError::file(&path, e.to_string().trim_end()))?;
    let program = args
        .first()
        .cloned()
        .unwrap_or_else(|| "signaling-server".into());
    let mut combined = vec![program];
    let mut from_file = BTreeSet::new();
    for (key, value) in &table {
        let arg = command
            .get_arguments()
            .find(|arg| is_setting(arg) && arg.get_long() == Some(key.as_str()))
            .ok_or_else(|| SettingsError::file(&path, unknown_key(&command, key)))?;
        let id = arg.get_id().as_str();
        let flags = file_flags(arg, key, value).map_err(|why| SettingsError::file(&path, why))?;
        // A flag or the environment overrides the file.
        if matches!(
            given.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        from_file.insert(id.to_owned());
        combined.extend(flags.into_iter().map(OsString::from));
    }
    combined.extend(args.iter().skip(1).cloned());
    let matches = match command.clone().try_get_matches_from(&combined) {
        Ok(matches) => matches,
        Err(e) => {
            // The command line alone is fine: the file's settings are
            // what went wrong (a setting it gives needs another, or a
            // flag excludes it).
            let alone = command.clone().try_get_matches_from(&args).is_ok();
            return Err(blame_the_file(e, alone, &path, &from_file, &command));
        }
    };
    Settings::new(matches, from_file)
}

/// A key no setting has, with the one meant if it is only spelt
/// differently.
fn unknown_key(command: &Command, key: &str) -> String {
    let normal = |text: &str| text.replace('_', "-").to_ascii_lowercase();
    let meant = command
        .get_arguments()
        .filter(|arg| is_setting(arg))
        .filter_map(Arg::get_long)
        .find(|long| normal(long) == normal(key) || normal(long) + "s" == normal(key));
    match meant {
        Some(long) => format!("unknown key {key:?}; did you mean {long:?}?"),
        None => format!(
            "unknown key {key:?}: the keys are the flags' long names, as `signaling-server --help` lists them (e.g. max-message-bytes)"
        ),
    }
}

/// The flags that say what the file's `key = value` says.
fn file_flags(arg: &Arg, key: &str, value: &toml::Value) -> Result<Vec<String>, String> {
    let several = matches!(arg.get_action(), ArgAction::Append);
    if !arg.get_action().takes_values() {
        return match value {
            toml::Value::Boolean(true) => Ok(vec![format!("--{key}")]),
            toml::Value::Boolean(false) => Ok(Vec::new()),
            _ => Err(format!("{key} is a switch: write {key} = true or false")),
        };
    }
    match value {
        toml::Value::Array(items) if several => items
            .iter()
            .map(|item| scalar(key, item).map(|text| format!("--{key}={text}")))
            .collect(),
        toml::Value::Array(_) => Err(format!("{key} takes one value, not a list")),
        value => Ok(vec![format!("--{key}={}", scalar(key, value)?)]),
    }
}

/// One value as the flag would take it.
fn scalar(key: &str, value: &toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(text) => Ok(text.clone()),
        toml::Value::Integer(n) => Ok(n.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        toml::Value::Float(_) => Err(format!(
            "{key}: write a whole number, or a duration as a string (\"1500ms\")"
        )),
        toml::Value::Datetime(_) | toml::Value::Array(_) | toml::Value::Table(_) => {
            Err(format!("{key}: write a string, a number or true/false"))
        }
    }
}

/// clap's error, said as the file's where a setting from the file is the
/// one it names, or where the command line alone had no error.
fn blame_the_file(
    error: clap::Error,
    command_line_alone_parses: bool,
    path: &Path,
    from_file: &BTreeSet<String>,
    command: &Command,
) -> SettingsError {
    let named = [ContextKind::InvalidArg, ContextKind::PriorArg]
        .into_iter()
        .filter_map(|kind| match error.get(kind) {
            Some(ContextValue::String(text)) => Some(vec![text.clone()]),
            Some(ContextValue::Strings(texts)) => Some(texts.clone()),
            _ => None,
        })
        .flatten()
        .filter_map(|text| {
            let long = text.strip_prefix("--")?;
            let long = long.split([' ', '=']).next()?.to_owned();
            Some(long)
        });
    let by_file = named.into_iter().any(|long| {
        command
            .get_arguments()
            .find(|arg| arg.get_long() == Some(long.as_str()))
            .is_some_and(|arg| from_file.contains(arg.get_id().as_str()))
    });
    let help = matches!(
        error.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    );
    if help || !(by_file || command_line_alone_parses) {
        return SettingsError::Flags(error);
    }
    // clap's message, without its usage and hint: the lines up to the
    // first blank one (a list of arguments follows some messages).
    let text = error.to_string();
    let message: Vec<&str> = text
        .lines()
        .take_while(|line| !line.trim().is_empty())
        .map(str::trim)
        .collect();
    let message = message.join(" ");
    SettingsError::file(path, message.strip_prefix("error: ").unwrap_or(&message))
}

impl Settings {
    fn new(matches: ArgMatches, from_file: BTreeSet<String>) -> Result<Self, SettingsError> {
        let cli = Cli::from_arg_matches(&matches)?;
        Ok(Self {
            cli,
            matches,
            from_file,
        })
    }

    /// Where the setting `id` came from.
    pub fn source(&self, id: &str) -> Source {
        let command = command();
        match command.get_arguments().find(|arg| arg.get_id() == id) {
            Some(arg) => self.source_of(arg),
            None => Source::Unset,
        }
    }

    fn source_of(&self, arg: &Arg) -> Source {
        let id = arg.get_id().as_str();
        match self.matches.value_source(id) {
            Some(ValueSource::CommandLine) if self.from_file.contains(id) => Source::File,
            Some(ValueSource::CommandLine) => Source::Flag,
            Some(ValueSource::EnvVariable) => Source::Environment(
                arg.get_env()
                    .map(|name| name.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            ),
            Some(ValueSource::DefaultValue) => Source::Default,
            _ => Source::Unset,
        }
    }

    /// Every setting in effect, as a file `--config` takes, each with
    /// where it came from. A secret is not printed, only that it is set.
    pub fn to_toml(&self) -> String {
        let mut out = String::from(
            "# signaling-server's settings in effect. Each comes from its flag, else its\n\
             # environment variable, else --config, else its default (shown as a\n\
             # comment); this file, given to --config, gives the same.\n",
        );
        for arg in command().get_arguments().filter(|arg| is_setting(arg)) {
            let Some(key) = arg.get_long() else { continue };
            let id = arg.get_id().as_str();
            let source = self.source_of(arg);
            // A default is shown as a comment: given in a file, it would
            // count as given (and some settings need others when given).
            let comment = if source == Source::Default { "# " } else { "" };
            let from = match source {
                Source::Flag => "flag".to_owned(),
                Source::Environment(name) => name,
                Source::File => "--config".to_owned(),
                Source::Default => "default".to_owned(),
                Source::Unset => {
                    let _ = writeln!(out, "# {key} =  (not set)");
                    continue;
                }
            };
            let raw: Vec<String> = self
                .matches
                .get_raw(id)
                .map(|values| values.map(|v| v.to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            if arg.is_hide_env_values_set() {
                let _ = writeln!(out, "# {key} = (set, not shown)  # {from}");
                continue;
            }
            let value = if !arg.get_action().takes_values() {
                // As the server reads it: a variable may say yes or 1.
                self.matches.get_flag(id).to_string()
            } else if matches!(arg.get_action(), ArgAction::Append) {
                let items: Vec<String> = raw.iter().map(|text| toml_value(text)).collect();
                format!("[{}]", items.join(", "))
            } else {
                toml_value(raw.first().map_or("", String::as_str))
            };
            let _ = writeln!(out, "{comment}{key} = {value}  # {from}");
        }
        out
    }
}

/// A value as TOML: a whole number or true/false as such (the file gives
/// them back as the same text), anything else as a string.
fn toml_value(text: &str) -> String {
    let number = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'))
        && text.parse::<i64>().is_ok();
    if number || text == "true" || text == "false" {
        text.to_owned()
    } else {
        toml::Value::String(text.to_owned()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file in a directory of its own.
    fn file(name: &str, text: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("signaling-config-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn args(list: &[&str]) -> Vec<OsString> {
        std::iter::once("signaling-server")
            .chain(list.iter().copied())
            .map(OsString::from)
            .collect()
    }

    fn error(result: Result<Settings, SettingsError>) -> String {
        match result {
            Ok(settings) => panic!("parsed: {:?}", settings.cli),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn every_setting_has_an_environment_variable_and_a_key() {
        let command = command();
        let settings: Vec<&Arg> = command.get_arguments().filter(|a| is_setting(a)).collect();
        assert!(settings.len() > 50, "{}", settings.len());
        for arg in settings {
            let env = arg
                .get_env()
                .unwrap_or_else(|| panic!("{:?} has no variable", arg.get_id()));
            assert!(env.to_string_lossy().starts_with(ENV_PREFIX), "{env:?}");
        }
        let env_of = |id: &str| {
            command
                .get_arguments()
                .find(|a| a.get_id() == id)
                .and_then(Arg::get_env)
                .map(|e| e.to_string_lossy().into_owned())
        };
        assert_eq!(
            env_of("max_message_bytes").as_deref(),
            Some("SIGNALING_MAX_MESSAGE_BYTES")
        );
        assert_eq!(
            env_of("http_server_port").as_deref(),
            Some("SIGNALING_HTTP_SERVER_PORT")
        );
        // Those that had one keep it.
        assert_eq!(
            env_of("allowed_origins").as_deref(),
            Some("SIGNALING_ALLOWED_ORIGINS")
        );
        assert_eq!(env_of("config").as_deref(), Some("SIGNALING_CONFIG"));
    }

    #[test]
    fn the_file_gives_settings_and_flags_override_it() {
        let path = file(
            "override",
            "listen = \"127.0.0.1:9000\"\nmax-message-bytes = 4096\n\
             stun-server = [\"stun:a.example:3478\", \"b.example:3478\"]\n\
             allow-insecure = true\nrate-limit = 10\nidle-timeout = \"1m\"\n",
        );
        let config = format!("--config={}", path.display());
        let settings = parse(args(&[&config, "--rate-limit", "20"])).unwrap();
        let cli = &settings.cli;
        assert_eq!(cli.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(cli.max_message_bytes, 4096);
        assert_eq!(cli.stun_servers, ["stun:a.example:3478", "b.example:3478"]);
        assert!(cli.allow_insecure);
        assert_eq!(cli.rate_limit, 20, "the flag wins");
        assert_eq!(cli.idle_timeout, std::time::Duration::from_secs(60));
        assert_eq!(settings.source("rate_limit"), Source::Flag);
        assert_eq!(settings.source("max_message_bytes"), Source::File);
        assert_eq!(settings.source("ping_interval"), Source::Default);
        assert_eq!(settings.source("tls_cert"), Source::Unset);
    }

    #[test]
    fn a_flag_may_need_a_setting_the_file_gives() {
        let path = file("requires", "tls-key = \"/k.pem\"\n");
        let config = format!("--config={}", path.display());
        let settings = parse(args(&[&config, "--tls-cert", "/c.pem"])).unwrap();
        assert_eq!(settings.cli.tls_key.as_deref(), Some(Path::new("/k.pem")));
        // And the file's own settings are held to what they need.
        let path = file("requires-missing", "tls-cert = \"/c.pem\"\n");
        let text = error(parse(args(&[&format!("--config={}", path.display())])));
        assert!(
            text.contains("--config") && text.contains("--tls-key"),
            "{text}"
        );
    }

    #[test]
    fn bad_files_get_an_error_that_names_the_file_and_the_key() {
        for (name, text, expected) in [
            (
                "unknown",
                "max-mesage-bytes = 5\n",
                "unknown key \"max-mesage-bytes\"",
            ),
            (
                "spelling",
                "max_message_bytes = 5\n",
                "did you mean \"max-message-bytes\"?",
            ),
            (
                "plural",
                "stun-servers = [\"stun:x\"]\n",
                "did you mean \"stun-server\"?",
            ),
            ("value", "max-message-bytes = 5\n", "max-message-bytes"),
            ("type", "max-message-bytes = 1.5\n", "whole number"),
            (
                "list",
                "listen = [\"a\"]\n",
                "listen takes one value, not a list",
            ),
            (
                "switch",
                "allow-insecure = \"yes\"\n",
                "allow-insecure is a switch",
            ),
            ("syntax", "listen = \n", "TOML"),
            (
                "table",
                "[server]\nlisten = \"x\"\n",
                "unknown key \"server\"",
            ),
        ] {
            let path = file(name, text);
            let message = error(parse(args(&[&format!("--config={}", path.display())])));
            assert!(
                message.starts_with(&format!("--config {}", path.display())),
                "{name}: {message}"
            );
            assert!(
                message.contains(expected) || (expected == "TOML" && message.contains("line 1")),
                "{name}: {message}"
            );
        }
        let missing = error(parse(args(&["--config", "/nonexistent/signaling.toml"])));
        assert!(missing.contains("cannot read it"), "{missing}");
    }

    #[test]
    fn a_bad_flag_is_not_blamed_on_the_file() {
        let path = file("flag-blame", "rate-limit = 10\n");
        let config = format!("--config={}", path.display());
        match parse(args(&[&config, "--max-message-bytes", "x"])) {
            Err(SettingsError::Flags(e)) => assert_eq!(e.kind(), ErrorKind::ValueValidation),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn print_config_is_a_file_that_gives_the_same_settings() {
        let path = file(
            "print",
            "max-message-bytes = 4096\nstun-server = [\"stun:a.example:3478\"]\n\
             tls-self-signed-dir = \"/tmp/x y\"\ndevice-socket-mode = \"0660\"\n",
        );
        let config = format!("--config={}", path.display());
        let settings = parse(args(&[
            &config,
            "--client-token",
            "s3cret",
            "--allow-insecure",
        ]))
        .unwrap();
        let text = settings.to_toml();
        assert!(
            text.contains("max-message-bytes = 4096  # --config"),
            "{text}"
        );
        assert!(text.contains("allow-insecure = true  # flag"), "{text}");
        assert!(
            text.contains("# ping-interval = \"15s\"  # default"),
            "{text}"
        );
        assert!(text.contains("# redis-lease = \"5s\"  # default"), "{text}");
        assert!(text.contains("# tls-cert =  (not set)"), "{text}");
        assert!(
            text.contains("# client-token = (set, not shown)  # flag"),
            "{text}"
        );
        assert!(!text.contains("s3cret"), "{text}");
        // Read back, it gives what it printed.
        let again = file("print-again", &text);
        let reread = parse(args(&[&format!("--config={}", again.display())])).unwrap();
        assert_eq!(reread.cli.max_message_bytes, 4096);
        assert_eq!(reread.cli.stun_servers, ["stun:a.example:3478"]);
        assert!(reread.cli.allow_insecure);
        assert_eq!(reread.cli.device_socket_mode, 0o660);
        assert_eq!(reread.cli.tls_self_signed_dir, Path::new("/tmp/x y"));
        assert_eq!(reread.to_toml().lines().count(), text.lines().count());
    }

    #[test]
    fn numbers_and_switches_are_written_as_toml_reads_them() {
        assert_eq!(toml_value("65536"), "65536");
        assert_eq!(toml_value("0"), "0");
        assert_eq!(toml_value("0660"), "\"0660\"");
        assert_eq!(toml_value("true"), "true");
        assert_eq!(toml_value("127.0.0.1:8443"), "\"127.0.0.1:8443\"");
        assert_eq!(
            toml_value("99999999999999999999"),
            "\"99999999999999999999\""
        );
        assert_eq!(toml_value("a \"quoted\" one"), r#"'a "quoted" one'"#);
        assert_eq!(toml_value("it's"), r#""it's""#);
    }
}
