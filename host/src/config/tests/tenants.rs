//! Tenant tables: credentials, grants, quotas and their members' limits.

use super::*;

const TWO: &str = r#"
[[tenant]]
name = "acme"
creds = "acme.creds"
streams = "acme-streams.toml"
publish = ["orders.>"]
max_in_flight = 8
max_memory = "128MiB"
cpu_share = 3
max_handlers = 2

[tenant.limits]
memory = "16MiB"

[[tenant]]
name = "globex"
user = "g"
password = "p"

[[handler]]
name = "a"
tenant = "acme"
component = "a.wasm"
stream = "ORDERS"
consumer = "c"
publish = ["orders.processed"]
limits = { max_in_flight = 4 }

[[handler]]
name = "mine"
component = "m.wasm"
stream = "ORDERS"
consumer = "c"
"#;

#[test]
fn a_tenant_has_credentials_streams_quotas_and_defaults_for_its_handlers() {
    let config = Config::parse(TWO, Path::new("/etc/jw")).unwrap();
    let acme = &config.tenants[0];
    assert_eq!(
        acme.credentials.creds.as_deref(),
        Some(Path::new("/etc/jw/acme.creds"))
    );
    assert_eq!(
        acme.streams.as_ref().unwrap().spec,
        Path::new("/etc/jw/acme-streams.toml")
    );
    assert_eq!(
        acme.quotas,
        Quotas {
            max_in_flight: Some(8),
            max_memory: Some(ByteSize::mib(128)),
            cpu_share: 3,
            max_handlers: Some(2),
        }
    );
    let globex = &config.tenants[1];
    assert_eq!(
        globex.credentials.user_password,
        Some(("g".into(), "p".into()))
    );
    assert_eq!(globex.quotas.cpu_share, 1, "the default weight");
    let a = &config.handlers[0].component;
    assert_eq!(a.tenant, "acme");
    assert_eq!(a.limits.memory, ByteSize::mib(16), "the tenant's default");
    assert_eq!(a.limits.max_in_flight, 4, "its own");
    let mine = &config.handlers[1].component;
    assert_eq!(mine.tenant, DEFAULT_TENANT);
    assert_eq!(mine.limits.memory, Limits::default().memory);
}

#[test]
fn a_handler_asking_more_than_its_tenant_grants_is_refused() {
    let text = TWO
        .replace(
            "publish = [\"orders.processed\"]",
            "publish = [\"payments.charged\"]",
        )
        .replace(
            "limits = { max_in_flight = 4 }",
            "limits = { max_in_flight = 9, memory = \"256MiB\" }",
        );
    let problems = Config::parse(&text, Path::new(".")).unwrap_err();
    let expected = [
        "handler a: limits.max_in_flight is 9, over tenant acme's max_in_flight 8",
        "handler a: limits.memory is 256.0 MiB, over tenant acme's max_memory 128.0 MiB",
        "handler a: publish subject \"payments.charged\" is outside tenant acme's grant [orders.>]",
    ];
    for line in expected {
        assert!(
            problems.iter().any(|p| p == line),
            "{line:?} not in {problems:#?}"
        );
    }
}

#[test]
fn tenants_are_declared_named_plainly_and_authenticated_once() {
    let problems = |text: &str| Config::parse(text, Path::new(".")).unwrap_err().join("\n");
    let undeclared = TWO.replace("tenant = \"acme\"", "tenant = \"initech\"");
    assert!(
        problems(&undeclared)
            .contains("tenant \"initech\" is not declared (declared: acme, globex)"),
        "{}",
        problems(&undeclared)
    );
    let bad = r#"
[runtime]
handlers_dir = "d"

[[tenant]]
name = "a.b"
user = "u"

[[tenant]]
name = "default"
creds = "c"
nkey = "k"

[[tenant]]
name = "none"
max_in_flight = 0
cpu_share = 0
"#;
    let text = problems(bad);
    for line in [
        "tenant a.b: the name \"a.b\" must be letters, digits, - and _",
        "tenant a.b: `user` and `password` go together",
        "tenant default: \"default\" is the tenant of components that name none",
        "tenant default: set only one of `creds`, `nkey` or `user` and `password`",
        "tenant none: no credentials",
        "tenant none: max_in_flight is 0",
        "tenant none: cpu_share is 0",
    ] {
        assert!(text.contains(line), "{line:?} not in:\n{text}");
    }
}

#[test]
fn a_tenant_runs_no_more_handlers_than_its_max_handlers() {
    let extra = "\n[[handler]]\nname = \"b\"\ntenant = \"acme\"\ncomponent = \"b.wasm\"\nstream = \"ORDERS\"\nconsumer = \"c\"\n\n[[publisher]]\nname = \"p\"\ntenant = \"acme\"\ncomponent = \"p.wasm\"\nevery = \"1s\"\n";
    let problems = Config::parse(&format!("{TWO}{extra}"), Path::new(".")).unwrap_err();
    assert!(
        problems
            .iter()
            .any(|p| p
                == "tenant acme: 3 handlers and publishers configured, over its max_handlers 2"),
        "{problems:#?}"
    );
}

#[test]
fn a_manifest_does_not_pick_its_tenant() {
    let config = Config::parse(TWO, Path::new(".")).unwrap();
    let manifest = "tenant = \"acme\"\nstream = \"ORDERS\"\nconsumer = \"c\"\n";
    let problems = config
        .manifest("x", DEFAULT_TENANT, Path::new("x.wasm"), manifest)
        .unwrap_err();
    assert!(
        problems[0].contains("`tenant` is not set in a manifest"),
        "{problems:?}"
    );
}

#[test]
fn the_tenants_example_parses() {
    let config = example::deploy("tenants/jetwasm.toml");
    let names: Vec<&str> = config.tenants.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["acme", "globex"]);
    assert!(config
        .handlers
        .iter()
        .all(|h| h.component.tenant != DEFAULT_TENANT));
}
