//! `jetwasm new`: a handler or publisher project in any supported language, from the templates
//! in `handlers/templates/`, with the WIT contract and the toolchain script beside them, so that
//! `./build.sh` alone builds a component this host runs.
//!
//! A template is `<lang>/build.sh` and any files shared by its kinds (at any depth), plus
//! `<lang>/<kind>/` with the sources for that world. `{{name}}`, `{{name_snake}}`,
//! `{{world}}` and `{{lang}}` are filled in.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::ValueEnum as _;
use include_dir::{include_dir, Dir, DirEntry};

static TEMPLATES: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/../handlers/templates");
static WIT: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/../wit");
const TOOLCHAIN: &str = include_str!("../../handlers/toolchain.sh");

/// A language jetwasm has a template for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust with wit-bindgen, built for wasm32-wasip2.
    Rust,
    /// Rust without `std` (`alloc` only): no WASI imports, the cheapest fresh sandbox; no
    /// HTTP publisher (that world is `wasi:http`).
    RustLean,
    /// Python with componentize-py.
    Python,
    /// JavaScript with componentize-js.
    Js,
    /// Go (wasip1) with wit-bindgen and the preview1 adapter.
    Go,
    /// C with clang, wasi-libc, wit-bindgen and the preview1 adapter.
    C,
}

impl fmt::Display for Lang {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Lang::Rust => "rust",
            Lang::RustLean => "rust-lean",
            Lang::Python => "python",
            Lang::Js => "js",
            Lang::Go => "go",
            Lang::C => "c",
        })
    }
}

/// What the project builds: the world its component targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// A message handler (the `handler` world).
    Handler,
    /// A timer-driven publisher (the `publisher` world).
    Publisher,
    /// A publisher serving HTTP requests (the `http-publisher` world: a `wasi:http`
    /// incoming handler).
    HttpPublisher,
}

impl Kind {
    fn world(self) -> &'static str {
        match self {
            Kind::Handler => "handler",
            Kind::Publisher => "publisher",
            Kind::HttpPublisher => "http-publisher",
        }
    }
}

/// Writes project `name` (lowercase letters, digits and dashes) of `kind` in `lang` into
/// `dir/name`, which must not exist yet or be empty; returns its path.
pub fn create(kind: Kind, name: &str, lang: Lang, dir: &Path) -> anyhow::Result<PathBuf> {
    check_name(name)?;
    let root = dir.join(name);
    if root
        .read_dir()
        .is_ok_and(|mut entries| entries.next().is_some())
    {
        bail!("{} already exists and is not empty", root.display());
    }
    let lang_dir = TEMPLATES
        .get_dir(lang.to_string())
        .with_context(|| format!("no templates for {lang}"))?;
    let kind_dir = lang_dir
        .get_dir(format!("{lang}/{}", kind.world()))
        .with_context(|| {
            let with: Vec<String> = (Lang::value_variants().iter())
                .filter(|l| TEMPLATES.get_dir(format!("{l}/{}", kind.world())).is_some())
                .map(Lang::to_string)
                .collect();
            format!(
                "no {} template for {lang}; there is one for {}",
                kind.world(),
                with.join(", ")
            )
        })?;
    let fill = |text: &str| {
        text.replace("{{name}}", name)
            .replace("{{name_snake}}", &name.replace('-', "_"))
            .replace("{{world}}", kind.world())
            .replace("{{lang}}", &lang.to_string())
    };

    // The language's files outside the kinds' folders are every project's.
    let kinds: Vec<PathBuf> = (Kind::value_variants().iter())
        .map(|kind| Path::new(&lang.to_string()).join(kind.world()))
        .collect();
    let mut files: Vec<(PathBuf, String)> = Vec::new();
    for file in all_files(lang_dir) {
        if kinds.iter().any(|kind| file.path().starts_with(kind)) {
            continue;
        }
        let relative = file.path().strip_prefix(lang.to_string())?;
        files.push((relative.to_owned(), fill(text(file)?)));
    }
    for file in all_files(kind_dir) {
        let relative = file.path().strip_prefix(kind_dir.path())?;
        files.push((relative.to_owned(), fill(text(file)?)));
    }
    // The current contract only: `wit/0.1/` stays behind.
    for file in (all_files(&WIT).into_iter()).filter(|f| !f.path().starts_with("0.1")) {
        files.push((Path::new("wit").join(file.path()), text(file)?.to_owned()));
    }
    files.push(("toolchain.sh".into(), TOOLCHAIN.to_owned()));
    files.push((
        ".gitignore".into(),
        text(template("gitignore")?)?.to_owned(),
    ));
    files.push((format!("{name}.toml").into(), manifest(kind, name)));
    let readme = fill(text(template("README.md")?)?);
    let component = std::path::absolute(root.join(format!("{name}.wasm")))?;
    files.push((
        "README.md".into(),
        readme.replace("{{config}}", &config_snippet(kind, name, &component)),
    ));

    for (relative, contents) in files {
        let path = root.join(&relative);
        std::fs::create_dir_all(path.parent().unwrap_or(&root))
            .with_context(|| format!("creating {}", root.display()))?;
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
        if relative.extension().is_some_and(|e| e == "sh") {
            make_executable(&path)?;
        }
    }
    Ok(root)
}

/// What to add to the host's configuration (and the stream spec) to run the project.
pub fn config_snippet(kind: Kind, name: &str, component: &Path) -> String {
    let component = component.display();
    match kind {
        Kind::Handler => format!(
            r#"```toml
# jetwasm.toml
[[handler]]
name = "{name}"
component = "{component}"
stream = "ORDERS"
consumer = "{name}"
publish = []                # subjects it may publish to

# streams.toml: its durable consumer, under the ORDERS [[stream]]
[[stream.consumer]]
durable = "{name}"
filter_subjects = ["orders.created"]
max_deliver = 5

# streams.toml: where dead letters go (deadletter.<stream>.<consumer>), if no stream has
# them yet (deploy/streams.toml has it; `jetwasm check --config` says when one is missing)
# [[stream]]
# name = "DEADLETTER"
# subjects = ["deadletter.>"]
```"#
        ),
        Kind::Publisher => format!(
            r#"```toml
# jetwasm.toml
[[publisher]]
name = "{name}"
component = "{component}"
every = "1s"                # or cron = "0/5 * * * * *"
publish = ["orders.ticks"]  # subjects it may publish to
config = {{ subject = "orders.ticks" }}
```"#
        ),
        Kind::HttpPublisher => format!(
            r#"```toml
# jetwasm.toml
[runtime]
http = "127.0.0.1:9090"     # the listener its route is served on (or `jetwasm run --http`)

[[publisher]]
name = "{name}"
component = "{component}"
http = {{ method = "POST", path = "/{name}" }}   # or path = "/{name}/{{*rest}}"
publish = ["orders.created"]  # subjects it may publish to
config = {{ subject = "orders.created" }}
```"#
        ),
    }
}

/// The project's drop-in manifest, `NAME.toml`: what `jetwasm dev` (or a copy) puts beside
/// `NAME.wasm` in a host's handlers folder. A handler brings its own durable consumer.
pub fn manifest(kind: Kind, name: &str) -> String {
    let head = format!(
        "# {name}.toml: the drop-in manifest, beside {name}.wasm in a host's handlers folder\n\
         # (`jetwasm dev` copies both). The keys of a [[{table}]] table, minus name and component.\n",
        table = if kind == Kind::Handler { "handler" } else { "publisher" },
    );
    let body = match kind {
        Kind::Handler => format!(
            r#"stream = "ORDERS"
publish = []                # subjects it may publish to
config = {{}}

# Its own durable consumer, created (or updated) when the handler is loaded.
[consumer]
durable = "{name}"
filter_subjects = ["orders.created"]
max_deliver = 5
"#
        ),
        Kind::Publisher => r#"kind = "publisher"
every = "1s"                # or cron = "0/5 * * * * *"
publish = ["orders.ticks"]  # subjects it may publish to
config = { subject = "orders.ticks" }
"#
        .to_owned(),
        Kind::HttpPublisher => format!(
            r#"kind = "publisher"
http = {{ method = "POST", path = "/{name}" }}
publish = ["orders.created"]  # subjects it may publish to
config = {{ subject = "orders.created" }}
"#
        ),
    };
    head + &body
}

fn check_name(name: &str) -> anyhow::Result<()> {
    let mut chars = name.chars();
    let starts_with_letter = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !starts_with_letter || !rest_ok || name.ends_with('-') || name.len() > 64 {
        bail!(
            "project name {name:?} must start with a lowercase letter and use only lowercase \
             letters, digits and dashes (at most 64, not ending with a dash), e.g. `order-audit`"
        );
    }
    Ok(())
}

fn template(name: &str) -> anyhow::Result<&'static include_dir::File<'static>> {
    TEMPLATES
        .get_file(name)
        .with_context(|| format!("template file {name} is missing"))
}

fn text<'a>(file: &'a include_dir::File<'_>) -> anyhow::Result<&'a str> {
    file.contents_utf8()
        .with_context(|| format!("template {} is not UTF-8", file.path().display()))
}

/// Every file under `dir`, at any depth.
fn all_files<'a>(dir: &'a Dir<'a>) -> Vec<&'a include_dir::File<'a>> {
    dir.entries()
        .iter()
        .flat_map(|entry| match entry {
            DirEntry::File(file) => vec![file],
            DirEntry::Dir(sub) => all_files(sub),
        })
        .collect()
}

fn make_executable(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_fit_every_language() {
        for good in ["a", "order-audit", "h2"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "Orders", "2fast", "my_handler", "x-", "a b", "../x"] {
            let err = check_name(bad).unwrap_err().to_string();
            assert!(err.contains("must start with a lowercase letter"), "{err}");
        }
    }

    #[test]
    fn a_project_has_sources_build_script_contract_and_toolchain() {
        let dir = tempfile::tempdir().unwrap();
        let root = create(Kind::Publisher, "tick-tock", Lang::Rust, dir.path()).unwrap();
        let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
        assert!(read("Cargo.toml").contains("name = \"tick-tock\""));
        assert!(read("src/lib.rs").contains("world: \"publisher\""));
        let build = read("build.sh");
        assert!(build.contains("release/tick_tock.wasm"), "{build}");
        assert!(!build.contains("{{"), "every placeholder is filled");
        assert_eq!(read("toolchain.sh"), TOOLCHAIN);
        assert_eq!(
            read("wit/jetwasm.wit"),
            include_str!("../../wit/jetwasm.wit")
        );
        assert!(root.join("wit/deps/http/http.wit").is_file());
        assert!(read("README.md").contains("[[publisher]]\nname = \"tick-tock\""));
        assert!(read("tick-tock.toml").contains("kind = \"publisher\"\nevery = \"1s\""));
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(root.join("build.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111, "build.sh is executable");

        let again = create(Kind::Publisher, "tick-tock", Lang::Rust, dir.path()).unwrap_err();
        assert!(again.to_string().contains("already exists"), "{again}");
    }

    #[test]
    fn a_lean_project_brings_its_runtime_and_has_no_http_publisher() {
        let dir = tempfile::tempdir().unwrap();
        let root = create(Kind::Handler, "lean", Lang::RustLean, dir.path()).unwrap();
        let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
        assert!(read("src/lib.rs").contains("no_std"));
        assert!(read("src/lean.rs").contains("fn cabi_realloc"));
        assert!(read("build.rs").contains("--initial-memory"));
        assert!(read("Cargo.toml").contains("default-features = false"));
        assert!(
            !root.join("handler").exists(),
            "the kind's folder is not copied as such"
        );

        let http = create(Kind::HttpPublisher, "web", Lang::RustLean, dir.path()).unwrap_err();
        let http = format!("{http:#}");
        assert!(
            http.contains(
                "no http-publisher template for rust-lean; there is one for rust, python"
            ),
            "{http}"
        );
    }

    /// The example orders handlers are built by exactly what `jetwasm new` writes, so the
    /// examples and the templates cannot drift apart.
    #[test]
    fn the_example_build_scripts_are_the_templates() {
        let handlers = Path::new(env!("CARGO_MANIFEST_DIR")).join("../handlers");
        for lang in ["python", "js", "go", "c"] {
            let template = TEMPLATES
                .get_file(format!("{lang}/build.sh"))
                .and_then(|f| f.contents_utf8())
                .unwrap();
            let example =
                std::fs::read_to_string(handlers.join(lang).join("orders/build.sh")).unwrap();
            let filled = template
                .replace("{{name}}", "orders")
                .replace("{{world}}", "handler");
            assert_eq!(example, filled, "handlers/{lang}/orders/build.sh");
        }
    }
}
