//! The config's unit tests: parsing, resolution, manifests, and the examples in deploy/.

use super::*;
use crate::schedule::Schedule;

const EXAMPLE: &str = r#"
streams = "streams.toml"
env = "dev"

[runtime]
http = "127.0.0.1:9090"

[runtime.limits]
memory = "32MiB"

[[handler]]
name = "orders"
component = "orders.wasm"
stream = "ORDERS"
consumer = "orders-processor"
publish = ["orders.processed"]
limits = { timeout = "2s" }
config = { retry_delay_ms = 1500, output_subject = "orders.processed" }
"#;

#[test]
fn parses_and_layers_limits() {
    let config = Config::parse(EXAMPLE, Path::new("/etc/jw")).unwrap();
    let streams = config.streams.as_ref().unwrap();
    assert_eq!(streams.spec, Path::new("/etc/jw/streams.toml"));
    assert_eq!(streams.env.as_deref(), Some("dev"));
    let h = &config.handlers[0].component;
    assert_eq!(h.wasm, Path::new("/etc/jw/orders.wasm"));
    let limits = h.limits;
    assert_eq!(limits.memory, ByteSize::mib(32));
    assert_eq!(limits.timeout, Duration::from_secs(2));
    assert_eq!(limits.max_in_flight, Limits::default().max_in_flight);
    assert_eq!(
        h.config,
        vec![
            ("output_subject".to_owned(), "orders.processed".to_owned()),
            ("retry_delay_ms".to_owned(), "1500".to_owned())
        ]
    );
}

#[test]
fn an_ordering_key_is_parsed_or_refused_naming_the_handler() {
    let ordered = format!("{EXAMPLE}ordering = {{ key = \"header:Order-Id\" }}\n");
    let config = Config::parse(&ordered, Path::new(".")).unwrap();
    let key = crate::ordering::OrderingKey::Header("Order-Id".into());
    assert_eq!(config.handlers[0].ordering, Some(key));
    let wrong = format!("{EXAMPLE}ordering = {{ key = \"body:1\" }}\n");
    let error = Config::parse(&wrong, Path::new("."))
        .unwrap_err()
        .join("\n");
    assert!(
        error.contains("handler orders: `ordering`: ordering key \"body:1\""),
        "{error}"
    );
}

#[test]
fn a_shadow_names_its_candidate_and_a_sample_between_0_and_1() {
    let shadowed =
        format!("{EXAMPLE}shadow = {{ component = \"orders-v2.wasm\", sample = 0.1 }}\n");
    let config = Config::parse(&shadowed, Path::new("/etc/jw")).unwrap();
    let expected = Shadow {
        wasm: "/etc/jw/orders-v2.wasm".into(),
        sample: 0.1,
    };
    assert_eq!(config.handlers[0].shadow, Some(expected));
    for sample in ["0", "1.5", "-0.1"] {
        let wrong = format!("{EXAMPLE}shadow = {{ component = \"v2.wasm\", sample = {sample} }}\n");
        let error = Config::parse(&wrong, Path::new("."))
            .unwrap_err()
            .join("\n");
        assert!(
            error.contains("handler orders: `shadow.sample` is") && error.contains("at most 1"),
            "{error}"
        );
    }
}

#[test]
fn publish_allow_list_and_reserved_subjects() {
    let config = Config::parse(EXAMPLE, Path::new(".")).unwrap();
    let publish = &config.handlers[0].component.publish;
    assert!(publish.allows("orders.processed"));
    assert!(!publish.allows("orders.created"));
    assert!(!publish.allows("$JS.API.STREAM.DELETE.ORDERS"));
    let everything = PublishPolicy::new(vec![">".into()]);
    assert!(everything.allows("orders.created"));
    assert!(
        !everything.allows("_INBOX.abc"),
        "reserved whatever the list says"
    );

    let bad = EXAMPLE.replace("[\"orders.processed\"]", "[\">\"]");
    let err = Config::parse(&bad, Path::new(".")).unwrap_err();
    assert!(
        err.iter()
            .any(|e| e.contains("overlaps the reserved $JS.>")),
        "{err:?}"
    );
}

#[test]
fn a_publisher_needs_exactly_one_valid_schedule() {
    let publisher = |schedule: &str| {
        format!("[[publisher]]\nname = \"p\"\ncomponent = \"p.wasm\"\n{schedule}\n")
    };
    let err = Config::parse(&publisher(""), Path::new(".")).unwrap_err();
    assert_eq!(
        err,
        vec!["publisher p: set one of `every`, `cron` or `http`"]
    );
    let both = publisher("every = \"1s\"\ncron = \"* * * * * *\"");
    let err = Config::parse(&both, Path::new(".")).unwrap_err();
    assert_eq!(
        err,
        vec!["publisher p: set only one of `every`, `cron` or `http`"]
    );
    let route = publisher("http = { method = \"POST\", path = \"orders/{id}\" }");
    let err = Config::parse(&route, Path::new(".")).unwrap_err();
    assert_eq!(
            err,
            vec![
                "publisher p: http.path \"orders/{id}\" must start with '/' and use only letters, digits and /-._~, and may end with a wildcard tail /{*name}",
                "publisher p: an HTTP route needs the listener: set [runtime] http (or pass --http)"
            ]
        );
    let err = Config::parse(&publisher("cron = \"every tuesday\""), Path::new(".")).unwrap_err();
    assert!(
        err[0].starts_with("publisher p: cron \"every tuesday\""),
        "{err:?}"
    );
    let ok = Config::parse(&publisher("cron = \"0/5 * * * * *\""), Path::new(".")).unwrap();
    let Trigger::Schedule(Schedule::Cron(cron)) = &ok.publishers[0].trigger else {
        panic!("{:?}", ok.publishers[0].trigger);
    };
    assert_eq!(cron.to_string(), "0/5 * * * * *");
    let ok = Config::parse(&publisher("every = \"250ms\""), Path::new(".")).unwrap();
    assert!(matches!(
        ok.publishers[0].trigger,
        Trigger::Schedule(Schedule::Every(every)) if every == Duration::from_millis(250)
    ));
}

#[test]
fn a_manifest_is_a_handler_or_publisher_table_named_by_its_file() {
    let config = Config::parse(EXAMPLE, Path::new("/etc/jw")).unwrap();
    let wasm = Path::new("/srv/handlers.d/audit.wasm");
    let manifest = "stream = \"ORDERS\"\nconsumer = \"audit\"\nlimits = { timeout = \"1s\" }\n";
    let DropIn::Handler(handler) = config
        .manifest("audit", DEFAULT_TENANT, wasm, manifest)
        .unwrap()
    else {
        panic!("a handler by default");
    };
    assert_eq!(handler.component.name, "audit");
    assert_eq!(handler.component.wasm, wasm);
    assert_eq!(handler.component.limits.timeout, Duration::from_secs(1));
    assert_eq!(
        handler.component.limits.memory,
        ByteSize::mib(32),
        "the runtime's default"
    );
    assert_eq!(handler.consumer, "audit");

    let publisher = "kind = \"publisher\"\ncron = \"0/5 * * * * *\"\n";
    let drop_in = config
        .manifest("ticker", DEFAULT_TENANT, wasm, publisher)
        .unwrap();
    assert!(matches!(
        drop_in,
        DropIn::Publisher(Publisher {
            trigger: Trigger::Schedule(Schedule::Cron(_)),
            ..
        })
    ));
}

#[test]
fn a_bad_manifest_names_every_problem() {
    let config = Config::parse(EXAMPLE, Path::new(".")).unwrap();
    let wasm = Path::new("x.wasm");
    let named = "name = \"other\"\ncomponent = \"x.wasm\"\nstream = \"S\"\nconsumer = \"c\"\n";
    assert_eq!(
        config
            .manifest("x", DEFAULT_TENANT, wasm, named)
            .unwrap_err(),
        [
            "`name` is not set in a manifest: it is the file's name",
            "`component` is not set in a manifest: it is the .wasm beside it",
        ]
    );
    let typo = config.manifest(
        "x",
        DEFAULT_TENANT,
        wasm,
        "stream = \"S\"\nconsumr = \"c\"\n",
    );
    let typo = typo.unwrap_err();
    assert!(typo[0].contains("unknown field `consumr`"), "{typo:?}");
    assert!(
        typo[0].contains("expected one of `stream`") && !typo[0].contains("`name`"),
        "only the keys a manifest may set: {typo:?}"
    );
    let kind = config
        .manifest("x", DEFAULT_TENANT, wasm, "kind = \"cron\"\n")
        .unwrap_err();
    assert_eq!(
        kind,
        ["kind = \"cron\": it must be \"handler\" or \"publisher\""]
    );
    let taken = "stream = \"S\"\nconsumer = \"c\"\n";
    assert_eq!(
        config
            .manifest("orders", DEFAULT_TENANT, wasm, taken)
            .unwrap_err(),
        ["handler orders: the name is used more than once"],
        "the config runs a handler of that name"
    );
    let route = "kind = \"publisher\"\nhttp = { method = \"GET\", path = \"/metrics\" }\n";
    assert_eq!(
        config
            .manifest("web", DEFAULT_TENANT, wasm, route)
            .unwrap_err(),
        ["publisher web: http.path \"/metrics\" is the host's own"]
    );
    let broken = config
        .manifest("x", DEFAULT_TENANT, wasm, "stream = [")
        .unwrap_err();
    assert!(broken[0].starts_with("line 1, column"), "{broken:?}");
}

#[test]
fn the_http_flag_counts_as_the_listener_a_route_needs() {
    let text = "[[publisher]]\nname = \"p\"\ncomponent = \"p.wasm\"\nhttp = { method = \"POST\", path = \"/orders\" }\n";
    assert!(Config::parse(text, Path::new(".")).is_err());
    let listener = "127.0.0.1:9090".parse().ok();
    let overrides = Overrides {
        http: listener,
        ..Overrides::default()
    };
    let config = Config::parse_with(text, Path::new("."), overrides).unwrap();
    assert_eq!(config.runtime.http, listener);
}

#[test]
fn http_routes_are_plain_unique_and_leave_the_host_paths_alone() {
    let route = |name: &str, method: &str, path: &str| {
        format!(
                "[[publisher]]\nname = \"{name}\"\ncomponent = \"p.wasm\"\nhttp = {{ method = \"{method}\", path = \"{path}\" }}\n"
            )
    };
    let text = format!(
        "[runtime]\nhttp = \"127.0.0.1:0\"\n{}{}{}{}",
        route("a", "POST", "/orders"),
        route("b", "POST", "/orders"),
        route("c", "GET", "/metrics"),
        route("d", "BREW", "/tea"),
    );
    let err = Config::parse(&text, Path::new(".")).unwrap_err();
    assert_eq!(
        err,
        vec![
            "publisher b: another publisher already serves POST /orders",
            "publisher c: http.path \"/metrics\" is the host's own",
            "publisher d: http.method \"BREW\" must be one of GET, POST, PUT, PATCH, DELETE",
        ]
    );
    let shared = format!(
        "[runtime]\nhttp = \"127.0.0.1:0\"\n{}{}",
        route("a", "POST", "/orders"),
        route("b", "GET", "/orders")
    );
    assert!(
        Config::parse(&shared, Path::new(".")).is_ok(),
        "same path, other method"
    );
    let wildcard = |path: &str| {
        let text = format!(
            "[runtime]\nhttp = \"127.0.0.1:0\"\n{}",
            route("a", "POST", path)
        );
        Config::parse(&text, Path::new("."))
    };
    assert!(wildcard("/api/{*rest}").is_ok(), "a wildcard tail");
    assert!(
        wildcard("/{*all}").is_ok(),
        "everything but the host's paths"
    );
    assert_eq!(
        wildcard("/api/{*}").unwrap_err(),
        vec!["publisher a: http.path \"/api/{*}\": a wildcard tail is written /{*name}, a name of letters, digits and _"]
    );
    assert!(wildcard("/api/{*rest}/more").is_err(), "only as the tail");
    assert!(wildcard("/api/{id}").is_err(), "no other placeholders");
}

#[test]
fn prefetch_is_a_limit_like_the_others_and_never_zero() {
    let config = Config::parse(EXAMPLE, Path::new(".")).unwrap();
    assert_eq!(config.handlers[0].component.limits.prefetch, 1024);
    let with = |prefetch: &str| {
        EXAMPLE.replace(
            "limits = {",
            &format!("limits = {{ prefetch = {prefetch}, "),
        )
    };
    let small = Config::parse(&with("16"), Path::new(".")).unwrap();
    assert_eq!(small.handlers[0].component.limits.prefetch, 16);
    let err = Config::parse(&with("0"), Path::new(".")).unwrap_err();
    assert_eq!(
        err,
        vec!["handler orders: limits.prefetch is 0: it must be 1 to 65536"]
    );
}

#[test]
fn instances_are_fresh_unless_reuse_is_asked_for() {
    let config = Config::parse(EXAMPLE, Path::new(".")).unwrap();
    assert_eq!(config.handlers[0].instances, Instances::Fresh);
    let with = |extra: &str| EXAMPLE.replace("limits = {", &format!("{extra}\nlimits = {{"));
    let reuse = Config::parse(&with("instances = \"reuse\""), Path::new(".")).unwrap();
    assert_eq!(
        reuse.handlers[0].instances,
        Instances::Reuse {
            per_instance: DEFAULT_MESSAGES_PER_INSTANCE
        }
    );
    let text = with("instances = \"reuse\"\nmessages_per_instance = 10");
    let ten = Config::parse(&text, Path::new(".")).unwrap();
    assert_eq!(
        ten.handlers[0].instances,
        Instances::Reuse { per_instance: 10 }
    );

    let err = Config::parse(&with("messages_per_instance = 10"), Path::new(".")).unwrap_err();
    assert_eq!(
        err,
        vec!["handler orders: `messages_per_instance` needs `instances = \"reuse\"`"]
    );
    let text = with("instances = \"reuse\"\nmessages_per_instance = 0");
    let err = Config::parse(&text, Path::new(".")).unwrap_err();
    assert_eq!(
        err,
        vec!["handler orders: `messages_per_instance` must be at least 1"]
    );
    let err = Config::parse(&with("instances = \"warm\""), Path::new(".")).unwrap_err();
    assert!(
        err[0].contains("unknown variant `warm`, expected `fresh` or `reuse`"),
        "{err:?}"
    );
}

#[test]
fn limits_out_of_range_and_an_empty_config_are_named_one_line_each() {
    let limits = "limits = { max_message_size = 0, memory = \"8GiB\", max_in_flight = 100000000, ";
    let text = EXAMPLE.replace("limits = {", limits);
    let err = Config::parse(&text, Path::new(".")).unwrap_err();
    assert_eq!(
            err,
            vec![
                "handler orders: limits.max_in_flight is 100000000: it must be 1 to 4096",
                "handler orders: limits.max_message_size is 0 B: it must be 1B to 64.0 MiB (NATS's largest payload)",
                "handler orders: limits.memory is 8.0 GiB: it must be 1MiB to 4.0 GiB (a 32-bit linear memory's largest)",
            ]
        );
    let err = Config::parse("[runtime]\n", Path::new(".")).unwrap_err();
    assert_eq!(
        err,
        vec!["nothing to run: add a [[handler]] or a [[publisher]], or set [runtime] handlers_dir or registry"]
    );
}

#[test]
fn unknown_keys_and_bad_values_are_named() {
    let err =
        Config::parse(&EXAMPLE.replace("consumer =", "consumr ="), Path::new(".")).unwrap_err();
    assert!(
        err[0].starts_with("line 15, column 1: unknown field `consumr`") && !err[0].contains('\n'),
        "{err:?}"
    );
    let err = Config::parse(
        &EXAMPLE.replace("\"2s\"", "\"2 fortnights\""),
        Path::new("."),
    )
    .unwrap_err();
    assert!(
        err[0].contains("timeout") || err[0].contains("line 17"),
        "{err:?}"
    );
    let bad = EXAMPLE.replace("retry_delay_ms = 1500", "retry_delay_ms = [1]");
    let err = Config::parse(&bad, Path::new(".")).unwrap_err();
    assert!(
        err[0].contains("config.retry_delay_ms must be a string, number or boolean"),
        "{err:?}"
    );
}

mod example {
    use super::*;

    pub(super) fn deploy(file: &str) -> Config {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy")
            .join(file);
        Config::load(&path, Overrides::default()).unwrap()
    }

    /// The examples in deploy/ must always parse, so they never drift from the code.
    #[test]
    fn deploy_examples_parse() {
        let config = deploy("jetwasm.toml");
        assert_eq!(config.handlers.len(), 2);
        assert_eq!(config.publishers.len(), 2);
        assert!(matches!(
            config.publishers[0].trigger,
            Trigger::Schedule(Schedule::Every(every)) if every == Duration::from_millis(500)
        ));
        let Trigger::Http(route) = &config.publishers[1].trigger else {
            panic!("{:?}", config.publishers[1].trigger);
        };
        assert_eq!(
            (route.method.as_str(), route.path.as_str()),
            ("POST", "/orders")
        );
        assert_eq!(config.handlers[0].consumer, "orders-processor");
        let totals = &config.handlers[1];
        assert_eq!(totals.component.kv[0].bucket, "customer-totals");
        assert!(totals.ordering.is_some(), "a customer's orders in order");
        assert!(config.streams.unwrap().spec.ends_with("streams.toml"));
        assert_eq!(
            config.runtime.limits,
            Limits::default(),
            "documents every default"
        );
    }

    /// `deploy/jetwasm.toml` is where users look up the defaults: it writes out every limit.
    #[test]
    fn the_deploy_config_writes_out_every_default_limit() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/jetwasm.toml");
        let file: toml::Table = std::fs::read_to_string(path).unwrap().parse().unwrap();
        let written: BTreeSet<&String> = file["runtime"]["limits"]
            .as_table()
            .unwrap()
            .keys()
            .collect();
        let defaults = toml::Table::try_from(Limits::default()).unwrap();
        let every: BTreeSet<&String> = defaults.keys().collect();
        assert_eq!(written, every);
    }

    /// The production config applies no overlay (one would scale the cluster's streams down);
    /// the local one differs from it only in the overlay and the listener address.
    #[test]
    fn production_applies_no_overlay_and_dev_differs_only_in_overlay_and_listener() {
        let (prod, dev) = (deploy("jetwasm.toml"), deploy("jetwasm.dev.toml"));
        let (prod_streams, dev_streams) =
            (prod.streams.clone().unwrap(), dev.streams.clone().unwrap());
        assert_eq!(prod_streams.env, None);
        assert!(!prod_streams.allow_destructive);
        assert_eq!(dev_streams.env.as_deref(), Some("dev"));
        assert_eq!(prod_streams.spec, dev_streams.spec);
        assert_eq!(prod.runtime.limits, dev.runtime.limits);
        let ip = |c: &Config| c.runtime.http.map(|a| a.ip().to_string());
        assert_eq!(
            ip(&prod).as_deref(),
            Some("0.0.0.0"),
            "reachable in a container"
        );
        assert_eq!(ip(&dev).as_deref(), Some("127.0.0.1"), "local only");
        let components = |c: &Config| format!("{:?} {:?}", c.handlers, c.publishers);
        assert_eq!(components(&prod), components(&dev));
    }
}

#[test]
fn max_instances_is_unset_by_default_and_never_zero() {
    let config = Config::parse(EXAMPLE, Path::new(".")).unwrap();
    assert_eq!(config.runtime.max_instances, None);
    let with =
        |n: &str| EXAMPLE.replacen("[runtime]", &format!("[runtime]\nmax_instances = {n}"), 1);
    let set = Config::parse(&with("500"), Path::new(".")).unwrap();
    assert_eq!(set.runtime.max_instances, Some(500));
    let err = Config::parse(&with("0"), Path::new(".")).unwrap_err();
    assert_eq!(
        err,
        vec!["runtime.max_instances is 0: it must be 1 to 100000"]
    );
}

#[test]
fn keep_resident_defaults_to_2_mib_and_has_a_ceiling() {
    let config = Config::parse(EXAMPLE, Path::new(".")).unwrap();
    assert_eq!(config.runtime.keep_resident, ByteSize::mib(2));
    let with =
        |v: &str| EXAMPLE.replacen("[runtime]", &format!("[runtime]\nkeep_resident = {v}"), 1);
    let none = Config::parse(&with("0"), Path::new(".")).unwrap();
    assert_eq!(none.runtime.keep_resident, ByteSize::b(0));
    let set = Config::parse(&with("\"512KiB\""), Path::new(".")).unwrap();
    assert_eq!(set.runtime.keep_resident, ByteSize::kib(512));
    let err = Config::parse(&with("\"1GiB\""), Path::new(".")).unwrap_err();
    assert_eq!(
        err,
        vec!["runtime.keep_resident is 1.0 GiB: it must be at most 64.0 MiB"]
    );
}

#[test]
fn a_manifest_may_declare_its_own_consumer_with_the_stream_init_keys() {
    let config = Config::parse(EXAMPLE, Path::new(".")).unwrap();
    let wasm = Path::new("audit.wasm");
    let manifest = "stream = \"ORDERS\"\n[consumer]\ndurable = \"audit\"\nfilter_subjects = [\"orders.created\"]\nmax_deliver = 3\n";
    let DropIn::Handler(handler) = config
        .manifest("audit", DEFAULT_TENANT, wasm, manifest)
        .unwrap()
    else {
        panic!("a handler");
    };
    assert_eq!(
        handler.consumer, "audit",
        "the consumer is the declared durable"
    );
    let own = handler.own_consumer.unwrap();
    assert_eq!((own.durable.as_str(), own.max_deliver), ("audit", Some(3)));
    assert_eq!(own.filter_subjects, ["orders.created"]);

    let typo = manifest.replace("max_deliver", "max_delivr");
    let err = config
        .manifest("audit", DEFAULT_TENANT, wasm, &typo)
        .unwrap_err();
    assert_eq!(err.len(), 1, "{err:?}");
    assert!(
        err[0].starts_with("[consumer]: unknown field `max_delivr`"),
        "{err:?}"
    );
    let plain = config
        .manifest(
            "audit",
            DEFAULT_TENANT,
            wasm,
            "stream = \"S\"\nconsumer = \"c\"\n",
        )
        .unwrap();
    assert!(matches!(
        plain,
        DropIn::Handler(Handler {
            own_consumer: None,
            ..
        })
    ));
}

mod tenants;
