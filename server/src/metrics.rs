//! Prometheus metrics (`GET /metrics`, text exposition format) with the
//! `prometheus-client` crate: requests by route, method and status, request
//! latency by route, query-encoding time and batch size, search time, and
//! the library's size (read when scraped).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Latency buckets in seconds: 0.5 ms to 10 s.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

fn batch_histogram() -> Histogram {
    Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0])
}

/// The server's metrics; cheap to clone (shared inside).
#[derive(Clone)]
pub(crate) struct Metrics {
    registry: Arc<Mutex<Registry>>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    encode: Family<KindLabels, Histogram, fn() -> Histogram>,
    batch: Family<KindLabels, Histogram, fn() -> Histogram>,
    search: Histogram,
    photos: Gauge,
    generation: Gauge,
    vector_bytes: Gauge,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("glimpse");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route pattern, method and status",
            requests.clone(),
        );
        let latency = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer HTTP requests, by route pattern",
            latency.clone(),
        );
        let encode = Family::<KindLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        registry.register(
            "query_encode_seconds",
            "Time of one model call encoding queries (text or image), per batch",
            encode.clone(),
        );
        let batch = Family::<KindLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            batch_histogram,
        );
        registry.register(
            "query_encode_batch_size",
            "Queries encoded together in one model call",
            batch.clone(),
        );
        let search = latency_histogram();
        registry.register(
            "search_seconds",
            "Time to search the library for one query vector (after encoding)",
            search.clone(),
        );
        let photos = Gauge::default();
        registry.register("library_photos", "Photos in the library", photos.clone());
        let generation = Gauge::default();
        registry.register(
            "library_generation",
            "Commits made to the library so far",
            generation.clone(),
        );
        let vector_bytes = Gauge::default();
        registry.register(
            "library_vector_bytes",
            "Bytes of RAM holding the library's embeddings",
            vector_bytes.clone(),
        );
        Self {
            registry: Arc::new(Mutex::new(registry)),
            requests,
            latency,
            encode,
            batch,
            search,
            photos,
            generation,
            vector_bytes,
        }
    }

    /// One answered request.
    pub(crate) fn observe_request(&self, route: &str, method: &str, status: u16, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_string(),
                method: method.to_string(),
                status: status.to_string(),
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels {
                route: route.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// One model call encoding `n` queries of `kind` (`text`, `image`).
    pub(crate) fn observe_encode(&self, kind: &str, n: usize, took: Duration) {
        let labels = KindLabels {
            kind: kind.to_string(),
        };
        self.encode
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        self.batch.get_or_create(&labels).observe(n as f64);
    }

    /// One library search.
    pub(crate) fn observe_search(&self, took: Duration) {
        self.search.observe(took.as_secs_f64());
    }

    /// The library's size, set before each scrape.
    pub(crate) fn set_library(&self, photos: usize, generation: u64, vector_bytes: usize) {
        self.photos.set(photos as i64);
        self.generation.set(generation as i64);
        self.vector_bytes.set(vector_bytes as i64);
    }

    /// Everything, in the Prometheus text format.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_counters_histograms_and_gauges() {
        let m = Metrics::new();
        m.observe_request("/api/search", "GET", 200, Duration::from_millis(3));
        m.observe_request("/api/search", "GET", 200, Duration::from_millis(30));
        m.observe_encode("text", 2, Duration::from_millis(1));
        m.set_library(12, 3, 4096);
        let text = m.render();
        assert!(
            text.contains(
                "glimpse_http_requests_total{route=\"/api/search\",method=\"GET\",status=\"200\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains("glimpse_http_request_duration_seconds_count{route=\"/api/search\"} 2")
        );
        assert!(text.contains("glimpse_query_encode_batch_size_sum{kind=\"text\"} 2.0"));
        assert!(text.contains("glimpse_library_photos 12"));
        assert!(text.ends_with("# EOF\n"));
    }
}
