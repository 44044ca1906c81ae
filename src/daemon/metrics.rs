//! Prometheus metrics of the request path (prometheus-client does the text format).

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FunctionLabel {
    pub function: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub function: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// A gauge of seconds.
pub type SecondsGauge = Gauge<f64, AtomicU64>;

type Histograms = Family<FunctionLabel, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 250 µs to ~8 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<FunctionLabel, Counter>,
    pub failures: Family<ReasonLabels, Counter>,
    pub in_flight: Family<FunctionLabel, Gauge>,
    prewarmed: Family<FunctionLabel, Gauge>,
    prewarmed_memory: Family<FunctionLabel, Gauge>,
    prewarm_target: Family<FunctionLabel, Gauge>,
    prewarm_starting: Family<FunctionLabel, Gauge>,
    prewarmed_used: Family<FunctionLabel, Counter>,
    cold_requests: Family<FunctionLabel, Counter>,
    prewarm_failures: Family<FunctionLabel, Counter>,
    prewarm_backoff: Family<FunctionLabel, SecondsGauge>,
    pub cold_start: Histograms,
    pub duration: Histograms,
    pub log_bytes_dropped: Family<FunctionLabel, Counter>,
    pub idle_closed: Family<FunctionLabel, Counter>,
    pub connections_refused: Family<ReasonLabels, Counter>,
    pub control_rejected: Family<ReasonLabels, Counter>,
    gateway_closed: Family<ReasonLabel, Counter>,
    netns: Family<OutcomeLabel, Counter>,
    cgroups: Family<OutcomeLabel, Counter>,
    cgroups_idle: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("faasd");
        let requests = Family::<FunctionLabel, Counter>::default();
        let failures = Family::<ReasonLabels, Counter>::default();
        let in_flight = Family::<FunctionLabel, Gauge>::default();
        let prewarmed = Family::<FunctionLabel, Gauge>::default();
        let prewarmed_memory = Family::<FunctionLabel, Gauge>::default();
        let prewarm_target = Family::<FunctionLabel, Gauge>::default();
        let prewarm_starting = Family::<FunctionLabel, Gauge>::default();
        let prewarmed_used = Family::<FunctionLabel, Counter>::default();
        let cold_requests = Family::<FunctionLabel, Counter>::default();
        let prewarm_failures = Family::<FunctionLabel, Counter>::default();
        let prewarm_backoff = Family::<FunctionLabel, SecondsGauge>::default();
        let cold_start: Histograms = Family::new_with_constructor(latency_histogram);
        let duration: Histograms = Family::new_with_constructor(latency_histogram);
        registry.register(
            "requests",
            "Requests accepted per function",
            requests.clone(),
        );
        registry.register(
            "failures",
            "Requests that failed, per function and reason",
            failures.clone(),
        );
        registry.register("in_flight", "Requests being served now", in_flight.clone());
        registry.register(
            "prewarmed",
            "Containers waiting for their request (--prewarm)",
            prewarmed.clone(),
        );
        registry.register(
            "prewarmed_memory_bytes",
            "Memory the waiting containers hold, from their cgroups (--prewarm-memory-mb bounds the sum)",
            prewarmed_memory.clone(),
        );
        registry.register(
            "prewarm_target",
            "How many containers should wait now (--prewarm auto: from the arrival rate; 0 once idle)",
            prewarm_target.clone(),
        );
        registry.register(
            "prewarm_starting",
            "Containers being started ahead of their request (not yet waiting)",
            prewarm_starting.clone(),
        );
        registry.register(
            "prewarmed_requests",
            "Warm hits: requests served by a container started ahead of them",
            prewarmed_used.clone(),
        );
        registry.register(
            "cold_requests",
            "Warm misses: requests that found no waiting container and waited for a cold start",
            cold_requests.clone(),
        );
        registry.register(
            "prewarm_failures",
            "Prewarmed containers that failed to start or whose handler exited while waiting",
            prewarm_failures.clone(),
        );
        registry.register(
            "prewarm_backoff_seconds",
            "Pause before the next prewarm attempt after consecutive failures (0: none)",
            prewarm_backoff.clone(),
        );
        registry.register(
            "cold_start_seconds",
            "From accepting the connection to the handler holding it",
            cold_start.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "From accepting the connection to the container's teardown",
            duration.clone(),
        );
        let log_bytes_dropped = Family::<FunctionLabel, Counter>::default();
        let idle_closed = Family::<FunctionLabel, Counter>::default();
        let connections_refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "log_bytes_dropped",
            "Handler output dropped past its per-request budget",
            log_bytes_dropped.clone(),
        );
        registry.register(
            "idle_connections_closed",
            "Connections closed because no byte arrived within --header-timeout",
            idle_closed.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections closed at accept: per_source (--max-conns-per-source) or fd_reserve",
            connections_refused.clone(),
        );
        let control_rejected = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "control_connections_rejected",
            "Connections to a function's control socket closed unused: second_connection, \
             not_its_container, no_container (none registered in time), too_many_waiting, \
             unreadable_peer",
            control_rejected.clone(),
        );
        let gateway_closed = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "gateway_closed",
            "Gateway connections closed before reaching a function: head_timeout, \
             head_too_large, malformed, unknown_function, no_route, per_source, fd_reserve",
            gateway_closed.clone(),
        );
        let netns = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "netns",
            "Pooled network namespaces: made, reused (came back empty), dropped (came back \
             not provably empty, never lent again)",
            netns.clone(),
        );
        let cgroups = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "cgroups",
            "Pooled container cgroups: made (none waited), reused (drained after a \
             container), dropped (could not be drained or re-limited, never lent again)",
            cgroups.clone(),
        );
        let cgroups_idle = Gauge::default();
        registry.register(
            "cgroups_idle",
            "Drained container cgroups waiting for the next container",
            cgroups_idle.clone(),
        );
        Metrics {
            registry,
            requests,
            failures,
            in_flight,
            prewarmed,
            prewarmed_memory,
            prewarm_target,
            prewarm_starting,
            prewarmed_used,
            cold_requests,
            prewarm_failures,
            prewarm_backoff,
            cold_start,
            duration,
            log_bytes_dropped,
            idle_closed,
            connections_refused,
            control_rejected,
            gateway_closed,
            netns,
            cgroups,
            cgroups_idle,
        }
    }
}

impl Metrics {
    pub fn label(function: &str) -> FunctionLabel {
        FunctionLabel {
            function: function.to_string(),
        }
    }

    /// The prewarm metrics of one function.
    pub fn prewarm(&self, function: &str) -> PrewarmMetrics {
        let label = Self::label(function);
        PrewarmMetrics {
            waiting: self.prewarmed.get_or_create(&label).clone(),
            memory: self.prewarmed_memory.get_or_create(&label).clone(),
            target: self.prewarm_target.get_or_create(&label).clone(),
            starting: self.prewarm_starting.get_or_create(&label).clone(),
            hits: self.prewarmed_used.get_or_create(&label).clone(),
            misses: self.cold_requests.get_or_create(&label).clone(),
            failures: self.prewarm_failures.get_or_create(&label).clone(),
            backoff: self.prewarm_backoff.get_or_create(&label).clone(),
        }
    }

    pub fn failure(&self, function: &str, reason: &str) {
        Self::count(&self.failures, function, reason);
    }

    pub fn refused(&self, function: &str, reason: &str) {
        Self::count(&self.connections_refused, function, reason);
    }

    pub fn gateway_closed(&self, reason: &str) {
        self.gateway_closed
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    fn count(family: &Family<ReasonLabels, Counter>, function: &str, reason: &str) {
        family
            .get_or_create(&ReasonLabels {
                function: function.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn observe(hist: &Histograms, function: &str, d: Duration) {
        hist.get_or_create(&Self::label(function))
            .observe(d.as_secs_f64());
    }

    /// Copies the runtime's namespace pool counts (kept by the runtime, which knows no
    /// metrics) into their counters.
    pub fn set_netns(&self, stats: crate::runtime::NetnsStats) {
        store_outcomes(
            &self.netns,
            [
                ("made", stats.made),
                ("reused", stats.reused),
                ("dropped", stats.dropped),
            ],
        );
    }

    /// Copies the runtime's cgroup pool counts into their metrics.
    pub fn set_cgroups(&self, stats: crate::runtime::CgroupStats) {
        store_outcomes(
            &self.cgroups,
            [
                ("made", stats.made),
                ("reused", stats.reused),
                ("dropped", stats.dropped),
            ],
        );
        self.cgroups_idle.set(stats.idle as i64);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// What /metrics shows of one function's prewarmed containers.
pub struct PrewarmMetrics {
    pub waiting: Gauge,
    pub memory: Gauge,
    pub target: Gauge,
    pub starting: Gauge,
    pub hits: Counter,
    pub misses: Counter,
    pub failures: Counter,
    pub backoff: SecondsGauge,
}

/// Sets each outcome's counter to a count kept elsewhere.
fn store_outcomes(family: &Family<OutcomeLabel, Counter>, counts: [(&'static str, u64); 3]) {
    for (outcome, n) in counts {
        family
            .get_or_create(&OutcomeLabel { outcome })
            .inner()
            .store(n, std::sync::atomic::Ordering::Relaxed);
    }
}
