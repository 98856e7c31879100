//! Connecting to NATS the same way from every jetwasm command: URL and credentials from flags
//! or the usual `NATS_*` environment variables.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

/// The URL used when neither a flag, `NATS_URL` nor a config file gives one.
pub const DEFAULT_URL: &str = "nats://127.0.0.1:4222";

/// Connection flags shared by `stream-init` and `jetwasm`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct NatsArgs {
    /// NATS server URL(s), comma-separated [default: nats://127.0.0.1:4222]
    #[arg(long, short = 's', env = "NATS_URL")]
    pub server: Option<String>,
    /// User name for user/password authentication
    #[arg(long, env = "NATS_USER")]
    pub user: Option<String>,
    /// Password for user/password authentication
    #[arg(long, env = "NATS_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Authentication token
    #[arg(long, env = "NATS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// NATS credentials file (JWT + NKey seed)
    #[arg(long, env = "NATS_CREDS")]
    pub creds: Option<PathBuf>,
    /// File holding an NKey seed (`SU...`) to authenticate with
    #[arg(long, env = "NATS_NKEY")]
    pub nkey: Option<PathBuf>,
    /// CA certificate (PEM) to verify the server's TLS certificate
    #[arg(long, env = "NATS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; needs --tls-key
    #[arg(long, env = "NATS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS; needs --tls-cert
    #[arg(long, env = "NATS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require TLS even if the server does not ask for it
    #[arg(long)]
    pub tls: bool,
}

impl NatsArgs {
    /// The URL to dial: the flag or `NATS_URL`, else `fallback`, else [`DEFAULT_URL`].
    pub fn url_or(&self, fallback: Option<&str>) -> String {
        self.server
            .clone()
            .or_else(|| fallback.map(str::to_owned))
            .unwrap_or_else(|| DEFAULT_URL.to_owned())
    }

    /// Connects to `url` with these credentials. Fails within a few seconds, naming the URL,
    /// when the server cannot be reached or refuses the credentials.
    pub async fn connect(&self, url: &str) -> anyhow::Result<async_nats::Client> {
        self.connect_with(url, self.options().await?).await
    }

    /// Connects to `url` with `options` (from [`NatsArgs::options`], with more set).
    pub async fn connect_with(
        &self,
        url: &str,
        options: async_nats::ConnectOptions,
    ) -> anyhow::Result<async_nats::Client> {
        let servers = url
            .split(',')
            .map(|u| u.trim().parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("invalid NATS server URL {:?}", redact(url)))?;
        options
            .connect(servers)
            .await
            .with_context(|| format!("cannot connect to NATS at {}", redact(url)))
    }

    /// The connect options these flags ask for: credentials, TLS and a short connection
    /// timeout.
    pub async fn options(&self) -> anyhow::Result<async_nats::ConnectOptions> {
        let mut options = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .name("jetwasm");
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            options = options.user_and_password(user.clone(), password.clone());
        } else if self.user.is_some() || self.password.is_some() {
            anyhow::bail!("--user and --password must be given together");
        }
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        }
        if let Some(creds) = &self.creds {
            options = options
                .credentials_file(creds)
                .await
                .with_context(|| format!("reading credentials file {}", creds.display()))?;
        }
        if let Some(ca) = &self.tls_ca {
            options = options.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        if let Some(nkey) = &self.nkey {
            let seed = std::fs::read_to_string(nkey)
                .with_context(|| format!("reading nkey seed file {}", nkey.display()))?;
            options = options.nkey(seed.trim().to_owned());
        }
        if self.tls {
            options = options.require_tls(true);
        }
        Ok(options)
    }
}

/// Connects and checks that JetStream answers, so later errors are about the work, not the
/// connection.
pub async fn jetstream(
    args: &NatsArgs,
    url: &str,
) -> anyhow::Result<async_nats::jetstream::Context> {
    let client = args.connect(url).await?;
    let js = async_nats::jetstream::new(client);
    js.query_account().await.with_context(|| {
        format!(
            "JetStream is not available at {} (is the server running with -js?)",
            redact(url)
        )
    })?;
    Ok(js)
}

/// `url` (one or several, comma-separated) with any password in it replaced by `***`, for
/// logs and errors.
pub fn redact(url: &str) -> String {
    let one = |url: &str| -> String {
        let Some((scheme, rest)) = url.split_once("://") else {
            return url.to_owned();
        };
        match rest.split_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
                None => format!("{scheme}://***@{host}"),
            },
            None => url.to_owned(),
        }
    };
    url.split(',').map(one).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_and_tokens_in_urls_are_redacted() {
        assert_eq!(
            redact("nats://u:secret@h:4222,nats://h2:4222"),
            "nats://u:***@h:4222,nats://h2:4222"
        );
        assert_eq!(redact("nats://token@h:4222"), "nats://***@h:4222");
        assert_eq!(redact("127.0.0.1:4222"), "127.0.0.1:4222");
    }
}
