//! `tierstack proxy`: the caching reverse proxy of `tierstack-http`, from
//! the config file's `proxy:` section and the command line.

use tierstack::{Config, TieredCache};

use crate::output::{Failure, Outcome, note};

/// What the command line adds to the config's `proxy:` section.
pub(crate) struct ProxyRequest {
    pub(crate) upstreams: Vec<String>,
    pub(crate) listen: Option<String>,
}

pub(crate) async fn proxy(config: &Config, cache: TieredCache, request: ProxyRequest) -> Outcome {
    let section = config.proxy.clone().unwrap_or_default();
    let (proxy, listen) = tierstack_http::Proxy::from_config(
        cache,
        &section,
        &request.upstreams,
        request.listen.as_deref(),
    )
    .map_err(Failure::usage)?;
    // The cache's counters at /_tierstack/metrics, in Prometheus's format.
    let proxy = match metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder() {
        Ok(handle) => proxy.with_metrics(std::sync::Arc::new(move || {
            crate::maintenance::sorted_exposition(&handle.render())
        })),
        Err(e) => {
            note(&format!("tierstack proxy: no /_tierstack/metrics ({e})"));
            proxy
        }
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Failure::unavailable(format!("cannot listen on {listen}: {e}")))?;
    let address = listener
        .local_addr()
        .map_err(|e| Failure::unavailable(format!("cannot listen on {listen}: {e}")))?;
    // Access lines and warnings on stderr, one per request.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_max_level(tracing::Level::INFO)
        .try_init();
    note(&format!(
        "tierstack proxy: listening on http://{address} ({}); Ctrl-C or SIGTERM stops it after the requests in flight",
        proxy.describe_routes()
    ));
    proxy
        .serve(listener, tierstack_http::shutdown_signal())
        .await
        .map_err(|e| Failure::unavailable(format!("the proxy stopped: {e}")))?;
    note("tierstack proxy: stopped");
    Ok(())
}
