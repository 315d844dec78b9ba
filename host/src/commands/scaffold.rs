//! `runnel new`: a ready plugin project in any supported language.
//!
//! A project is self-contained: it carries the WIT contract and the
//! language's SDK files (copied from this repository at build time of the
//! `runnel` binary, so they match the host that made them), a handler that
//! answers `greet` events, a build script, sample events and a config. The
//! next steps are printed, and are the same in every language: build,
//! `runnel test`, `runnel run`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// Languages a project can be made in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
    C,
    Go,
}

const WIT: [(&str, &str); 12] = [
    ("wit/types.wit", include_str!("../../../wit/types.wit")),
    ("wit/host.wit", include_str!("../../../wit/host.wit")),
    ("wit/world.wit", include_str!("../../../wit/world.wit")),
    (
        "wit/deps/keyvalue/store.wit",
        include_str!("../../../wit/deps/keyvalue/store.wit"),
    ),
    (
        "wit/deps/keyvalue/atomics.wit",
        include_str!("../../../wit/deps/keyvalue/atomics.wit"),
    ),
    (
        "wit/deps/keyvalue/batch.wit",
        include_str!("../../../wit/deps/keyvalue/batch.wit"),
    ),
    (
        "wit/deps/keyvalue/world.wit",
        include_str!("../../../wit/deps/keyvalue/world.wit"),
    ),
    (
        "wit/deps/config/store.wit",
        include_str!("../../../wit/deps/config/store.wit"),
    ),
    (
        "wit/deps/config/world.wit",
        include_str!("../../../wit/deps/config/world.wit"),
    ),
    (
        "wit/deps/http/http.wit",
        include_str!("../../../wit/deps/http/http.wit"),
    ),
    (
        "wit/deps/io/io.wit",
        include_str!("../../../wit/deps/io/io.wit"),
    ),
    (
        "wit/deps/clocks/clocks.wit",
        include_str!("../../../wit/deps/clocks/clocks.wit"),
    ),
];

fn files(lang: Lang) -> Vec<(&'static str, &'static str)> {
    match lang {
        Lang::Rust => vec![
            (
                "Cargo.toml",
                include_str!("../../templates/rust/Cargo.toml"),
            ),
            ("src/lib.rs", include_str!("../../templates/rust/lib.rs")),
            (
                "sdk/Cargo.toml",
                include_str!("../../templates/rust/sdk.Cargo.toml"),
            ),
            (
                "sdk/src/lib.rs",
                include_str!("../../../guest-sdk/src/lib.rs"),
            ),
            (
                "sdk/src/http.rs",
                include_str!("../../../guest-sdk/src/http.rs"),
            ),
            ("build.sh", include_str!("../../templates/rust/build.sh")),
        ],
        Lang::Python => vec![
            ("app.py", include_str!("../../templates/python/app.py")),
            (
                "runnel.py",
                include_str!("../../../guest-sdk/python/runnel.py"),
            ),
            ("build.sh", include_str!("../../templates/python/build.sh")),
        ],
        Lang::Js => vec![
            ("app.js", include_str!("../../templates/js/app.js")),
            ("runnel.js", include_str!("../../../guest-sdk/js/runnel.js")),
            ("kv.js", include_str!("../../../guest-sdk/js/kv.js")),
            ("config.js", include_str!("../../../guest-sdk/js/config.js")),
            ("http.js", include_str!("../../../guest-sdk/js/http.js")),
            (
                "package.json",
                include_str!("../../templates/js/package.json"),
            ),
            ("build.sh", include_str!("../../templates/js/build.sh")),
        ],
        Lang::C => vec![
            ("plugin.c", include_str!("../../templates/c/plugin.c")),
            ("runnel.h", include_str!("../../../guest-sdk/c/runnel.h")),
            ("runnel.c", include_str!("../../../guest-sdk/c/runnel.c")),
            (
                "runnel_http.c",
                include_str!("../../../guest-sdk/c/runnel_http.c"),
            ),
            ("build.sh", include_str!("../../templates/c/build.sh")),
        ],
        Lang::Go => vec![
            ("go.mod", include_str!("../../templates/go/go.mod")),
            ("plugin.go", include_str!("../../templates/go/plugin.go")),
            ("build.sh", include_str!("../../templates/go/build.sh")),
            ("sdk/go.mod", include_str!("../../../guest-sdk/go/go.mod")),
            (
                "sdk/.gitignore",
                include_str!("../../../guest-sdk/go/.gitignore"),
            ),
            (
                "sdk/runnel.go",
                include_str!("../../../guest-sdk/go/runnel.go"),
            ),
            ("sdk/gc.go", include_str!("../../../guest-sdk/go/gc.go")),
            (
                "sdk/kv/kv.go",
                include_str!("../../../guest-sdk/go/kv/kv.go"),
            ),
            (
                "sdk/config/config.go",
                include_str!("../../../guest-sdk/go/config/config.go"),
            ),
            (
                "sdk/http/http.go",
                include_str!("../../../guest-sdk/go/http/http.go"),
            ),
            (
                "sdk/internal/call/call.go",
                include_str!("../../../guest-sdk/go/internal/call/call.go"),
            ),
            (
                "sdk/internal/wit/exports/export_wit_world/exports.go",
                include_str!(
                    "../../../guest-sdk/go/internal/wit/exports/export_wit_world/exports.go"
                ),
            ),
        ],
    }
}

const EVENTS: &str = r#"{"name":"greet","payload":{"name":"Ada"}}
{"name":"greet","payload":{"nom":"Grace"}}
{"name":"something-else","payload":{}}
"#;

const CONFIG: &str = r#"# runnel run --config runnel.toml --input events.ndjson --exit-when-idle
[routes]
"greet" = "in"
"something-else" = "in"
"greeted" = "greetings"

[[plugin]]
name = "{{name}}"
path = "{{name}}.wasm"
streams = ["in"]
"#;

const README: &str = r#"# {{name}}

A Runnel plugin ({{lang}}): it answers `greet` events with `greeted`.

```sh
# build {{name}}.wasm
./build.sh
# each event's verdict, logs and emits
runnel test {{name}}.wasm --events events.ndjson
# pin the behaviour, then check it
runnel test {{name}}.wasm --events events.ndjson > expected.txt
runnel test {{name}}.wasm --events events.ndjson --expect expected.txt
# through a host, on the in-memory backend, with a summary at the end
runnel run --config runnel.toml --input events.ndjson --exit-when-idle
```

`runnel` is the host's binary: `cargo install --path host` in a Runnel
checkout puts it on your `PATH`.

`wit/` is the contract between the host and the plugin; the SDK file next to
the handler wraps it ({{sdk}}). Verdicts: return normally to acknowledge;
retry (try again later) or reject (dead-letter now) to refuse.
"#;

/// Writes a new project `name` in `lang` under `parent`; returns its
/// directory. Refuses to touch an existing directory.
pub fn create(lang: Lang, name: &str, parent: &Path) -> anyhow::Result<PathBuf> {
    let valid = !name.is_empty()
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    anyhow::ensure!(
        valid,
        "{name:?} is not a plugin name: use lowercase letters, digits and '-', starting with a letter"
    );
    let dir = parent.join(name);
    anyhow::ensure!(!dir.exists(), "{} already exists", dir.display());
    let (lang_name, sdk) = match lang {
        Lang::Rust => ("Rust", "`sdk/`, the `runnel-guest` crate"),
        Lang::Python => ("Python", "`runnel.py`"),
        Lang::Js => ("JavaScript", "`runnel.js`"),
        Lang::C => ("C", "`runnel.h`, `runnel.c` and `runnel_http.c`"),
        Lang::Go => ("Go", "`sdk/`, the `runnel.dev/runnel` module"),
    };
    let fill = |text: &str| {
        text.replace("{{name}}", name)
            .replace("{{crate}}", &name.replace('-', "_"))
            .replace("{{lang}}", lang_name)
            .replace("{{sdk}}", sdk)
    };
    let mut all: Vec<(&str, String)> = files(lang)
        .into_iter()
        .chain(WIT)
        .map(|(path, text)| (path, fill(text)))
        .collect();
    all.push(("events.ndjson", EVENTS.to_string()));
    all.push(("runnel.toml", fill(CONFIG)));
    all.push(("README.md", fill(README)));
    for (path, text) in all {
        let file = dir.join(path);
        std::fs::create_dir_all(file.parent().expect("a file has a directory"))
            .with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
        if path.ends_with(".sh") {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file of a directory, recursively, relative to `root`.
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(path.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }

    /// The Go SDK's files are listed by hand above (`include_str!` needs
    /// literal paths): a file added to the SDK but not to the project would
    /// only show when a new project fails to build.
    #[test]
    fn a_go_project_carries_every_file_of_the_go_sdk() {
        let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-sdk/go");
        let mut found = Vec::new();
        walk(&sdk, &sdk, &mut found);
        let carried = files(Lang::Go);
        for rel in found {
            if rel.extension().is_some_and(|e| e == "md") {
                continue;
            }
            let want = std::fs::read_to_string(sdk.join(&rel)).unwrap();
            let name = format!("sdk/{}", rel.display());
            let text = carried
                .iter()
                .find(|(path, _)| *path == name)
                .map(|(_, t)| *t);
            assert_eq!(
                text,
                Some(want.as_str()),
                "{name} is not in files(Lang::Go)"
            );
        }
    }
}
