//! The authoring tools, without NATS: `jetwasm check` on good components and on each kind of
//! mismatch, and `jetwasm new` in every language, built with its own `./build.sh` and checked.

use std::path::{Path, PathBuf};
use std::process::Command;

use harness::handler_wasm;

/// Runs `jetwasm check` on `component`: exit code, stdout, stderr.
fn check(component: &Path) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_jetwasm"))
        .arg("check")
        .arg(component)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code(), stdout, stderr)
}

/// Writes the component in WAT text `wat` as a binary file in `dir`.
fn component_from_wat(dir: &Path, name: &str, wat: &str) -> PathBuf {
    let path = dir.join(format!("{name}.wasm"));
    std::fs::write(&path, wat::parse_str(wat).unwrap()).unwrap();
    path
}

#[test]
fn check_says_which_world_a_component_fits_without_nats() {
    let check = |component: &str| check(&handler_wasm(component));
    for (component, world) in [
        ("orders", "handler"),
        ("orders_generator", "publisher"),
        ("orders_intake", "http-publisher"),
    ] {
        let (code, stdout, stderr) = check(component);
        assert_eq!(code, Some(0), "{stderr}");
        assert!(
            stdout.contains(&format!("fits the {world} world")),
            "{stdout}"
        );
    }
    let (code, _, stderr) = check("fixture_no_world");
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("fixture_no_world.wasm fits no jetwasm world"),
        "{stderr}"
    );
    for world in ["handler: ", "publisher: ", "http-publisher: "] {
        assert!(stderr.contains(world), "a reason per world: {stderr}");
    }
    assert!(
        stderr.contains("handle") && stderr.contains("on-tick"),
        "names the missing exports: {stderr}"
    );
}

#[test]
fn check_names_a_wrong_signature_and_an_import_the_host_does_not_provide() {
    let dir = tempfile::tempdir().unwrap();
    // `handle` is there, but takes a string and returns a number.
    let wrong = component_from_wat(
        dir.path(),
        "wrong_signature",
        r#"(component
            (core module $m
                (memory (export "memory") 1)
                (func (export "handle") (param i32 i32) (result i32) i32.const 0)
                (func (export "realloc") (param i32 i32 i32 i32) (result i32) i32.const 0))
            (core instance $i (instantiate $m))
            (func (export "handle") (param "msg" string) (result u32)
                (canon lift (core func $i "handle") (memory (core memory $i "memory"))
                    (realloc (core func $i "realloc")))))"#,
    );
    let (code, _, stderr) = check(&wrong);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("handler: ") && stderr.contains("handle") && stderr.contains("type"),
        "names the export and its type: {stderr}"
    );

    // Imports an interface this host does not have.
    let import = component_from_wat(
        dir.path(),
        "unknown_import",
        r#"(component
            (import "acme:db/query@1.0.0" (instance (export "run" (func (param "sql" u32)))))
        )"#,
    );
    let (code, _, stderr) = check(&import);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("acme:db/query@1.0.0"),
        "names the missing import: {stderr}"
    );

    let (code, _, stderr) = check(&dir.path().join("absent.wasm"));
    assert_eq!(code, Some(1));
    assert!(stderr.contains("absent.wasm"), "{stderr}");
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"not wasm").unwrap();
    let (code, _, stderr) = check(&junk);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("is not a WebAssembly component"),
        "{stderr}"
    );
}

/// `jetwasm new <kind> <name> --lang <lang>`, then the project's own `./build.sh` (with the
/// project's own `wit/` and `toolchain.sh`, not the repository's), then `jetwasm check`; an
/// HTTP publisher is also sent requests with `jetwasm try`.
fn new_builds_and_checks(lang: &str) {
    new_kinds_build_and_check(lang, &["handler", "publisher", "http-publisher"]);
}

/// [`new_builds_and_checks`] for the `kinds` named (each is also its world); returns the
/// folder holding the projects (`my-<kind>`).
fn new_kinds_build_and_check(lang: &str, kinds: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for &kind in kinds {
        let world = kind;
        let name = format!("my-{kind}");
        let out = Command::new(env!("CARGO_BIN_EXE_jetwasm"))
            .args(["new", kind, &name, "--lang", lang, "--dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("./build.sh"), "says how to build: {stdout}");
        let project = dir.path().join(&name);
        let build = Command::new(project.join("build.sh"))
            .current_dir(&project)
            .env_remove("JETWASM_WIT")
            .env_remove("JETWASM_TOOLCHAIN")
            // Rust projects share one target folder across test runs.
            .env("CARGO_TARGET_DIR", new_projects_target())
            .output()
            .unwrap();
        assert!(
            build.status.success(),
            "{lang} {kind}: ./build.sh failed:\n{}",
            String::from_utf8_lossy(&build.stderr)
        );
        let component = project.join(format!("{name}.wasm"));
        let (code, stdout, stderr) = check(&component);
        assert_eq!(code, Some(0), "{lang} {kind}: {stderr}");
        assert!(
            stdout.contains(&format!("fits the {world} world")),
            "{lang} {kind}: {stdout}"
        );
        if kind == "http-publisher" {
            new_http_publisher_answers(lang, &component, dir.path());
        }
        new_project_helps_editors(lang, &project, world);
    }
    dir
}

/// A new project carries its language's API notes and, once built, the generated bindings
/// where its language's editors look for them, the contract's `kv` (0.2) included.
fn new_project_helps_editors(lang: &str, project: &Path, world: &str) {
    let exists = |path: &str| {
        let file = project.join(path);
        assert!(file.exists(), "{lang} {world}: no {}", file.display());
    };
    // The generated file `path` declares each of `names`.
    let declares = |path: &str, names: &[&str]| {
        let text = std::fs::read_to_string(project.join(path))
            .unwrap_or_else(|e| panic!("{lang} {world}: {path}: {e}"));
        for name in names {
            assert!(text.contains(name), "{lang} {world}: {path} lacks {name:?}");
        }
    };
    if lang.starts_with("rust") {
        return; // rust-analyzer expands wit-bindgen's macro itself
    }
    let notes = std::fs::read_to_string(project.join("API.md")).unwrap();
    assert!(notes.starts_with("# The jetwasm contract in "), "{notes}");
    for section in ["## Key-value state", "## Batched and atomic publishes"] {
        assert!(notes.contains(section), "{lang}: API.md lacks {section}");
    }
    match lang {
        "python" => {
            exists("bindings/wit_world/imports/publish.py");
            exists("pyrightconfig.json");
            declares("jetwasm.py", &["\nkv = _Kv()"]);
            declares(
                "bindings/wit_world/imports/kv.py",
                &[
                    "def update(bucket: str, key: str, value: bytes, revision: int) -> int",
                    "def delete(bucket: str, key: str)",
                    "class KvError_WrongRevision",
                    "class Entry",
                ],
            );
            declares(
                "bindings/wit_world/imports/publish.py",
                &["def publish_batch(", "def publish_atomic("],
            );
        }
        "js" => {
            // jetwasm.js's kv imports the module these declare: tsc below checks it against them.
            declares("jetwasm.js", &["export const kv = {"]);
            exists("bindings/interfaces/jetwasm-runtime-publish.d.ts");
            declares(
                "bindings/interfaces/jetwasm-runtime-kv.d.ts",
                &[
                    "declare module 'jetwasm:runtime/kv@0.2.0'",
                    "export function update(bucket: string, key: string, value: Uint8Array, revision: bigint): bigint",
                    "tag: 'wrong-revision'",
                ],
            );
            // The declarations resolve every import, as an editor would: the template
            // type-checks clean with TypeScript.
            let tsc = Command::new("bash")
                .args([
                    "-c",
                    "eval \"$(./toolchain.sh js)\" && tsc -p jsconfig.json",
                ])
                .current_dir(project)
                .output()
                .unwrap();
            assert!(tsc.status.success(), "{world}: tsc: {tsc:?}");
        }
        "c" => {
            declares(
                &format!("bindings/{}.h", world.replace('-', "_")),
                &[
                    "bool jetwasm_runtime_kv_update(",
                    "bool jetwasm_runtime_kv_delete(",
                    "JETWASM_RUNTIME_KV_KV_ERROR_WRONG_REVISION",
                    "jetwasm_runtime_publish_publish_batch(",
                ],
            );
            exists("compile_flags.txt");
        }
        "go" => {
            exists("bindings/go.mod");
            declares(
                "bindings/jetwasm_runtime_kv/wit_bindings.go",
                &[
                    "func Update(bucket string, key string, value []uint8, revision uint64) witTypes.Result[uint64, KvError]",
                    "func Delete(",
                    "KvError_WrongRevision",
                ],
            );
            // The workspace resolves every import, as gopls would: go vet type-checks the code.
            let vet = Command::new("bash")
                .args([
                    "-c",
                    "eval \"$(./toolchain.sh go)\" && GOOS=wasip1 GOARCH=wasm GOPROXY=off GOTOOLCHAIN=local go vet .",
                ])
                .current_dir(project)
                .env_remove("GOFLAGS")
                .output()
                .unwrap();
            assert!(vet.status.success(), "{world}: go vet: {vet:?}");
        }
        _ => {}
    }
    let ignored = std::fs::read_to_string(project.join(".gitignore")).unwrap();
    assert!(ignored.contains("bindings/"), "{ignored}");
}

/// A handler project in `lang` whose `app` source is `app`, built; returns its component.
fn built_handler(lang: &str, dir: &Path, app: &str) -> Result<PathBuf, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_jetwasm"))
        .args(["new", "handler", "checked", "--lang", lang, "--dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let project = dir.join("checked");
    let file = if lang == "js" { "app.js" } else { "app.py" };
    std::fs::write(project.join(file), app).unwrap();
    let build = Command::new(project.join("build.sh"))
        .current_dir(&project)
        .env_remove("JETWASM_WIT")
        .env_remove("JETWASM_TOOLCHAIN")
        .output()
        .unwrap();
    match build.status.success() {
        true => Ok(project.join("checked.wasm")),
        false => Err(String::from_utf8_lossy(&build.stderr).into_owned()),
    }
}

const CHECKED_JS: &str = r#"import { get } from 'jetwasm:runtime/config@0.2.0';
import { kv, publish } from './jetwasm.js';

export function handle(msg) {
  const mode = get('mode');
  if (mode === 'number') publish('out.x', 42);
  else if (mode === 'header') publish('out.x', 'x', [['k', 7]]);
  else if (mode === 'kv-number') kv.put('c', 'k', 42);
  else if (mode === 'kv') {
    const calls = [() => kv.get('c', 'k'), () => kv.put('c', 'k', 'v'), () => kv.create('c', 'k', 'v'),
      () => kv.update('c', 'k', 'v', 1n), () => kv.remove('c', 'k'), () => kv.delete('c', 'k')];
    const answers = calls.map((call) => {
      try { call(); return 'ok'; } catch (e) { return e.payload?.tag ?? String(e); }
    });
    return { tag: 'term', val: answers.join(' ') };
  }
  else publish('out.x', 'héllo');
  return { tag: 'ack' };
}
"#;

const CHECKED_PYTHON: &str = r#"import wit_world
from componentize_py_types import Err
from jetwasm import kv, publish
from wit_world.imports import config
from wit_world.imports.types import Disposition_Ack, Disposition_Term


class WitWorld(wit_world.WitWorld):
    def handle(self, msg):
        mode = config.get("mode")
        if mode == "number":
            publish("out.x", 42)
        elif mode == "header":
            publish("out.x", "x", [("k", 7)])
        elif mode == "kv-number":
            kv.put("c", "k", 42)
        elif mode == "kv":
            calls = [lambda: kv.get("c", "k"), lambda: kv.put("c", "k", "v"),
                     lambda: kv.create("c", "k", "v"), lambda: kv.update("c", "k", "v", 1),
                     lambda: kv.delete("c", "k")]
            answers = []
            for call in calls:
                try:
                    call()
                    answers.append("ok")
                except Err as e:
                    answers.append(type(e.value).__name__)
            return Disposition_Term(" ".join(answers))
        else:
            publish("out.x", "héllo")
        return Disposition_Ack()
"#;

/// What a new JavaScript or Python author meets: a string payload is sent as UTF-8 (it used
/// to be an empty message in JavaScript), and a payload or header of the wrong type fails the
/// call with an error naming the argument (Python's CastError named none). The same for the
/// checked `kv`, whose every call reaches the host (`delete` too, whatever the bindings call
/// it) and answers the kv-error `unavailable` under `jetwasm try`, which has no NATS.
fn publish_checks_its_arguments(lang: &str, app: &str) {
    let dir = tempfile::tempdir().unwrap();
    let component = built_handler(lang, dir.path(), app).unwrap();
    let message = dir.path().join("message");
    std::fs::write(&message, "{}").unwrap();
    let run = |mode: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_jetwasm"))
            .arg("try")
            .arg(&component)
            .arg("--message")
            .arg(&message)
            .args(["--config", &format!("mode={mode}")])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let sent = run("string");
    assert!(
        sent.starts_with("ack\npublish out.x [") && sent.trim_end().ends_with("] héllo"),
        "{lang}: a string is sent as UTF-8: {sent}"
    );
    let (payload, header, value, unavailable) = match lang {
        // componentize-js prints an uncaught error's message and stack, not its class.
        "js" => (
            "publish: payload must be a Uint8Array or a string (sent as UTF-8), got number 42",
            "publish: headers[0] must be a [name, value] pair of strings",
            "kv.put: value must be a Uint8Array or a string (sent as UTF-8), got number 42",
            ["unavailable"; 6].join(" "),
        ),
        _ => (
            "TypeError: publish: payload must be bytes or a str (sent as UTF-8), got int 42",
            "TypeError: publish: headers[0] must be a (name, value) pair of str",
            "TypeError: kv.put: value must be bytes or a str (sent as UTF-8), got int 42",
            ["KvError_Unavailable"; 5].join(" "),
        ),
    };
    let answered = run("kv");
    assert_eq!(
        answered.lines().next(),
        Some(format!("term: {unavailable}").as_str()),
        "{lang}: get, put, create, update, delete: {answered}"
    );
    for (mode, error) in [
        ("number", payload),
        ("header", header),
        ("kv-number", value),
    ] {
        let out = run(mode);
        assert!(
            out.starts_with("failed: trap") && out.contains(error),
            "{lang} {mode}: {out}"
        );
    }
}

#[test]
fn js_publish_sends_strings_as_utf8_and_names_a_wrong_argument() {
    publish_checks_its_arguments("js", CHECKED_JS);
}

#[test]
fn python_publish_sends_strings_as_utf8_and_names_a_wrong_argument() {
    publish_checks_its_arguments("python", CHECKED_PYTHON);
}

#[test]
fn a_javascript_syntax_error_fails_the_build_naming_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let app = "export function handle(msg) {\n  const x = ;\n  return { tag: 'ack' };\n}\n";
    let error = built_handler("js", dir.path(), app).unwrap_err();
    assert!(
        error.contains("app.js:2") && error.contains("SyntaxError"),
        "{error}"
    );
}

/// The new HTTP publisher publishes a request's body to its default subject and answers 202
/// with the stream and sequence; 403 when the subject is denied; 413 past 1 MiB.
fn new_http_publisher_answers(lang: &str, component: &Path, dir: &Path) {
    let request = |body: &[u8], extra: &[&str]| {
        let file = dir.join("request-body");
        std::fs::write(&file, body).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_jetwasm"))
            .arg("try")
            .arg(component)
            .arg("--request")
            .arg(&file)
            .args(["--path", "/x"])
            .args(extra)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), stdout, stderr)
    };
    let published = |out: &str| out.lines().any(|line| line.starts_with("publish "));
    let order = br#"{"id":"o-1"}"#;

    let (code, out, err) = request(order, &[]);
    assert_eq!(code, Some(0), "{lang}: {out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines.len(),
        2,
        "{lang}: the answer and one publish: {out}{err}"
    );
    assert!(
        lines[0].starts_with("202 {")
            && lines[0].contains("\"stream\"")
            && lines[0].contains("\"seq\""),
        "{lang}: the component's answer: {out}"
    );
    assert!(
        lines[1].starts_with("publish orders.created [") && lines[1].ends_with(r#"] {"id":"o-1"}"#),
        "{lang}: the body, published (recorded, not sent): {out}"
    );

    // With an allow-list that leaves out its subject, the publish is denied, as on the host.
    let (code, out, err) = request(order, &["--publish", "orders.other"]);
    assert_eq!(code, Some(1), "{lang}: {out}{err}");
    assert!(
        out.starts_with("403 {") && out.contains("\"error\""),
        "{lang}: {out}{err}"
    );
    assert!(!published(&out), "{lang}: nothing stored: {out}");

    let (code, out, err) = request(&vec![b'a'; (1 << 20) + 1], &[]);
    assert_eq!(code, Some(1), "{lang}: {out}{err}");
    assert!(
        out.starts_with("413 {") && out.contains("\"error\""),
        "{lang}: {out}{err}"
    );
    assert!(!published(&out), "{lang}: nothing published: {out}");
}

/// Beside the test binaries: `target/<profile>/new-projects`.
fn new_projects_target() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().join("new-projects")
}

#[test]
fn new_rust_projects_build_and_fit_their_world() {
    new_builds_and_checks("rust");
}

/// The lean template has no HTTP publisher (that world is `wasi:http`); its components import
/// no WASI at all, only the contract.
#[test]
fn new_rust_lean_projects_build_and_fit_their_world() {
    let dir = new_kinds_build_and_check("rust-lean", &["handler", "publisher"]);
    for name in ["my-handler", "my-publisher"] {
        let wasm = dir.path().join(name).join(format!("{name}.wasm"));
        let engine = wasmtime::Engine::default();
        let component = wasmtime::component::Component::from_file(&engine, &wasm).unwrap();
        let ty = component.component_type();
        let imports: Vec<&str> = ty.imports(&engine).map(|(name, _)| name).collect();
        assert!(
            !imports.is_empty() && imports.iter().all(|i| i.starts_with("jetwasm:runtime/")),
            "{name}: {imports:?}"
        );
    }
}

#[test]
fn new_python_projects_build_and_fit_their_world() {
    new_builds_and_checks("python");
}

#[test]
fn new_js_projects_build_and_fit_their_world() {
    new_builds_and_checks("js");
}

#[test]
fn new_go_projects_build_and_fit_their_world() {
    new_builds_and_checks("go");
}

#[test]
fn new_c_projects_build_and_fit_their_world() {
    new_builds_and_checks("c");
}

/// The orders handler on the test consumer, writing to `outputs`, dead letters under
/// `dead_letter`.
fn topology_config(setup: &harness::setup::Setup, outputs: &str, dead_letter: &str) -> String {
    let runtime = format!("dead_letter = \"{dead_letter}\"");
    setup
        .config(&handler_wasm("orders"), "", &runtime)
        .replace("\"orders.processed\", \"orders.audited\"", outputs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_the_streams_do_not_fit_fails_at_start_naming_every_problem_and_its_fix() {
    let setup = harness::setup::Setup::new("").await;
    // Three mistakes: an output no stream captures, dead letters no stream captures, and an
    // output the handler's own consumer would deliver back to it.
    let bad = topology_config(&setup, "\"nowhere.out\", \"orders.created\"", "graveyard");
    let problems = [
        "handler h: publishes to \"nowhere.out\", but no stream captures it: add a stream with subjects [\"nowhere.out\"]",
        "handler h: its dead letters go to \"graveyard.ORDERS.proc\", but no stream captures it: add a stream with subjects [\"graveyard.>\"]",
        "handler h: its consumer ORDERS/proc (filter \"orders.created\") would deliver the handler's own outputs on \"orders.created\" back to it",
    ];
    let error = harness::Host::start(&setup.server.url, &bad)
        .await
        .err()
        .expect("the host refuses to start")
        .to_string();
    for problem in problems {
        assert!(error.contains(problem), "{problem}\nnot in:\n{error}");
    }
    assert!(
        !error.contains("consumer bound"),
        "nothing started: {error}"
    );

    // `jetwasm check --config` says the same, with only a connection.
    let check_config = |text: &str| {
        let path = setup.dir.path().join("checked.toml");
        std::fs::write(&path, text.replace("{http}", "127.0.0.1:0")).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_jetwasm"))
            .args(["check", "--config", path.to_str().unwrap()])
            .args(["--server", &setup.server.url])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    };
    let (code, text) = check_config(&bad);
    assert_eq!(code, Some(1), "{text}");
    for problem in problems {
        assert!(text.contains(problem), "{problem}\nnot in:\n{text}");
    }
    let good = topology_config(&setup, "\"orders.processed\"", "deadletter");
    let (code, text) = check_config(&good);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("the streams fit its 1 components"), "{text}");
}

#[test]
fn up_help_says_no_url_means_a_local_server() {
    let out = Command::new(env!("CARGO_BIN_EXE_jetwasm"))
        .args(["up", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{help}");
    assert!(!help.contains("default: nats://"), "{help}");
    assert!(help.contains("start a local nats-server"), "{help}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_clash_fails_before_any_component_is_compiled() {
    let setup = harness::setup::Setup::new("").await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = setup.config(&handler_wasm("orders"), "", "");
    let addr = taken.local_addr().unwrap().to_string();
    let error = harness::Host::start_with(&setup.server.url, &config, &["--http", &addr])
        .await
        .err()
        .expect("the port is taken")
        .to_string();
    assert!(error.contains("binding the HTTP listener"), "{error}");
    assert!(
        !error.contains("handler loaded"),
        "nothing compiled first: {error}"
    );
}

#[test]
fn try_runs_one_message_through_a_handler_without_nats() {
    let dir = tempfile::tempdir().unwrap();
    let run = |payload: &str, extra: &[&str]| {
        let message = dir.path().join("message.json");
        std::fs::write(&message, payload).unwrap();
        let wasm = handler_wasm("orders");
        let out = Command::new(env!("CARGO_BIN_EXE_jetwasm"))
            .args([
                "try",
                wasm.to_str().unwrap(),
                "--message",
                message.to_str().unwrap(),
            ])
            .args(["--config", "output_subject=orders.audited"])
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let valid =
        r#"{"id":"o-1","customer":"c-1","items":[{"sku":"A1","qty":1,"price":9.5}],"total":9.5}"#;
    let (code, out) = run(valid, &[]);
    assert_eq!(code, Some(0), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "ack", "{out}");
    assert!(
        lines[1].starts_with("publish orders.audited [") && lines[1].contains("order-id=o-1"),
        "the publish is shown, not sent: {out}"
    );

    let (code, out) = run("{not json", &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.starts_with("term: invalid JSON"), "{out}");

    let crash = r#"{"id":"o-crash","customer":"c","items":[1],"total":1,"crash":true}"#;
    let (code, out) = run(crash, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.starts_with("failed: trap:") && out.contains("crash requested by order o-crash"),
        "{out}"
    );

    // With an allow-list, a publish outside it is denied, as on the host.
    let (code, out) = run(valid, &["--publish", "orders.processed"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.starts_with("term: cannot publish: denied subject orders.audited"),
        "{out}"
    );
}

#[test]
fn try_runs_a_folder_of_messages_as_a_table_and_a_publisher_tick() {
    let dir = tempfile::tempdir().unwrap();
    let messages = dir.path().join("messages");
    std::fs::create_dir(&messages).unwrap();
    let valid =
        r#"{"id":"o-1","customer":"c-1","items":[{"sku":"A1","qty":1,"price":9.5}],"total":9.5}"#;
    std::fs::write(messages.join("1-valid.json"), valid).unwrap();
    std::fs::write(messages.join("2-bad.json"), "{not json").unwrap();
    let jetwasm = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_jetwasm"))
            .arg("try")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let handler = handler_wasm("orders");
    let (code, table) = jetwasm(&[
        handler.to_str().unwrap(),
        "--messages",
        messages.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "one message is termed: {table}");
    let rows: Vec<&str> = table.lines().collect();
    assert!(rows[0].starts_with("FILE") && rows.len() == 3, "{table}");
    assert!(
        rows[1].starts_with("1-valid.json") && rows[1].ends_with(" 1  ack"),
        "{table}"
    );
    assert!(
        rows[2].starts_with("2-bad.json") && rows[2].contains("term: invalid JSON"),
        "{table}"
    );

    let publisher = handler_wasm("orders_generator");
    let (code, out) = jetwasm(&[
        publisher.to_str().unwrap(),
        "--tick",
        "--config",
        "subject=orders.created",
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("ok\npublish orders.created ["), "{out}");
    let (code, _) = jetwasm(&[
        publisher.to_str().unwrap(),
        "--message",
        messages.join("1-valid.json").to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "a publisher takes ticks");

    let intake = handler_wasm("orders_intake");
    let request = |body: &str| {
        let file = dir.path().join("body.json");
        std::fs::write(&file, body).unwrap();
        jetwasm(&[
            intake.to_str().unwrap(),
            "--request",
            file.to_str().unwrap(),
            "--path",
            "/orders",
        ])
    };
    let (code, out) = request(valid);
    assert_eq!(code, Some(0), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("202 {"),
        "the component's answer: {out}"
    );
    assert!(
        lines[1].starts_with("publish orders.created ["),
        "recorded, not sent: {out}"
    );
    let (code, out) = request("{not json");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.starts_with("400 {\"error\":\"invalid JSON"), "{out}");
}
