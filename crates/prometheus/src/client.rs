//! [`PromClient`]: instant queries against Prometheus's HTTP API (`/api/v1/query`), answered
//! as [`Sample`]s or a [`PromError`].
//!
//! Values arrive as strings (`"0.5"`, `"NaN"`, `"+Inf"`); [`parse_value`] turns them into
//! `f64` without losing NaN, which callers must treat as *no data*.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use switchyard_engine::error_chain;

use serde::Deserialize;

/// One element of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PromError {
    /// No answer: connection refused, timeout, or the connection broke.
    #[error("prometheus at {url} unreachable: {message}")]
    Unreachable { url: String, message: String },
    /// Prometheus answered `{"status":"error"}`, e.g. `bad_data` for a malformed expression.
    #[error("prometheus rejected query `{expr}` ({status} {error_type}): {error}")]
    Query {
        expr: String,
        status: u16,
        error_type: String,
        error: String,
    },
    /// An answer that is not what the API documents: not JSON, or not an instant vector.
    #[error("prometheus at {url} gave an unexpected answer to `{expr}`: {message}")]
    Unexpected {
        url: String,
        expr: String,
        message: String,
    },
}

/// A client for one Prometheus server; every request is bounded by the timeout.
#[derive(Debug, Clone)]
pub struct PromClient {
    base_url: String,
    timeout: Duration,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct Envelope {
    status: String,
    data: Option<Data>,
    #[serde(rename = "errorType")]
    error_type: Option<String>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    result: serde_json::Value,
}

#[derive(Deserialize)]
struct RawSample {
    metric: BTreeMap<String, String>,
    /// `[unix seconds, "value"]`.
    value: (f64, String),
}

impl PromClient {
    /// `base_url` is the server's root, e.g. `http://127.0.0.1:9090`.
    pub fn new(base_url: &str, timeout: Duration) -> PromClient {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .expect("a plain HTTP client builds");
        PromClient {
            base_url: base_url.trim_end_matches('/').to_owned(),
            timeout,
            http,
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Evaluates `expr` at `time` (Prometheus's own now when `None`). Only instant vectors
    /// are accepted: a scalar or string result is [`PromError::Unexpected`].
    pub async fn query(
        &self,
        expr: &str,
        time: Option<SystemTime>,
    ) -> Result<Vec<Sample>, PromError> {
        let url = format!("{}/api/v1/query", self.base_url);
        let mut form = vec![("query", expr.to_owned())];
        if let Some(time) = time {
            form.push(("time", unix_seconds(time)));
        }
        let unreachable = |e: reqwest::Error| PromError::Unreachable {
            url: self.base_url.clone(),
            message: if e.is_timeout() {
                format!("no answer within {:?}", self.timeout)
            } else {
                error_chain(&e)
            },
        };
        let response = self
            .http
            .post(&url)
            .form(&form)
            .send()
            .await
            .map_err(unreachable)?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(unreachable)?;
        self.decode(expr, status, &body)
    }

    fn decode(&self, expr: &str, status: u16, body: &[u8]) -> Result<Vec<Sample>, PromError> {
        let unexpected = |message: String| PromError::Unexpected {
            url: self.base_url.clone(),
            expr: expr.to_owned(),
            message,
        };
        let envelope: Envelope = serde_json::from_slice(body).map_err(|e| {
            let excerpt: String = String::from_utf8_lossy(body).chars().take(200).collect();
            unexpected(format!("HTTP {status}, not an API answer ({e}): {excerpt}"))
        })?;
        if envelope.status != "success" {
            return Err(PromError::Query {
                expr: expr.to_owned(),
                status,
                error_type: envelope.error_type.unwrap_or_default(),
                error: envelope.error.unwrap_or_default(),
            });
        }
        let data = envelope
            .data
            .ok_or_else(|| unexpected(format!("HTTP {status}, success without data")))?;
        if data.result_type != "vector" {
            return Err(unexpected(format!(
                "a {} result, not an instant vector",
                data.result_type
            )));
        }
        let raw: Vec<RawSample> = serde_json::from_value(data.result)
            .map_err(|e| unexpected(format!("malformed vector: {e}")))?;
        raw.into_iter()
            .map(|s| {
                let value = parse_value(&s.value.1)
                    .ok_or_else(|| unexpected(format!("sample value {:?}", s.value.1)))?;
                Ok(Sample {
                    labels: s.metric,
                    value,
                })
            })
            .collect()
    }
}

/// A sample value as Prometheus formats it: Go's float formatting, plus `NaN`, `+Inf`, `-Inf`.
pub(crate) fn parse_value(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => s.parse().ok(),
    }
}

/// Unix seconds with millisecond precision, as the API's `time` parameter takes them.
fn unix_seconds(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:03}", since.as_secs(), since.subsec_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> PromClient {
        PromClient::new("http://127.0.0.1:9/", Duration::from_secs(1))
    }

    #[test]
    fn values_keep_nan_and_infinities() {
        assert!(parse_value("NaN").unwrap().is_nan());
        assert_eq!(parse_value("+Inf"), Some(f64::INFINITY));
        assert_eq!(parse_value("-Inf"), Some(f64::NEG_INFINITY));
        assert_eq!(parse_value("0.01"), Some(0.01));
        assert_eq!(parse_value("1e+06"), Some(1e6));
        assert_eq!(parse_value("twelve"), None);
    }

    #[test]
    fn a_vector_answer_becomes_samples_with_labels() {
        let body = br#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"track":"canary"},"value":[1700000000.5,"12.5"]},
            {"metric":{},"value":[1700000000.5,"NaN"]}]}}"#;
        let samples = client().decode("x", 200, body).unwrap();
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].labels["track"], "canary");
        assert_eq!(samples[0].value, 12.5);
        assert!(samples[1].labels.is_empty() && samples[1].value.is_nan());
    }

    #[test]
    fn an_error_answer_names_the_expression_and_the_error_type() {
        let body = br#"{"status":"error","errorType":"bad_data","error":"parse error"}"#;
        let err = client().decode("sum(", 400, body).unwrap_err();
        assert_eq!(
            err,
            PromError::Query {
                expr: "sum(".into(),
                status: 400,
                error_type: "bad_data".into(),
                error: "parse error".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "prometheus rejected query `sum(` (400 bad_data): parse error"
        );
    }

    #[test]
    fn scalars_and_non_api_answers_are_unexpected() {
        let scalar = br#"{"status":"success","data":{"resultType":"scalar","result":[1,"2"]}}"#;
        let err = client().decode("1+1", 200, scalar).unwrap_err().to_string();
        assert!(err.contains("a scalar result"), "{err}");
        let html = b"<html>502 Bad Gateway</html>";
        let err = client().decode("up", 502, html).unwrap_err().to_string();
        assert!(err.contains("HTTP 502, not an API answer"), "{err}");
        assert!(err.contains("http://127.0.0.1:9"), "{err}");
    }

    #[test]
    fn time_is_sent_in_unix_seconds_with_milliseconds() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_042);
        assert_eq!(unix_seconds(t), "1700000000.042");
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client = PromClient::new(&format!("http://127.0.0.1:{port}"), Duration::from_secs(1));
        let err = client.query("up", None).await.unwrap_err();
        assert!(matches!(err, PromError::Unreachable { .. }), "{err}");
        assert!(err.to_string().contains("refused"), "{err}");
    }

    #[tokio::test]
    async fn a_server_that_never_answers_is_unreachable_after_the_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Accepts and holds the connection without ever answering.
        let _hold = tokio::spawn(async move {
            let (_socket, _) = listener.accept().await.unwrap();
            std::future::pending::<()>().await;
        });
        let client = PromClient::new(&format!("http://{addr}"), Duration::from_millis(200));
        let started = std::time::Instant::now();
        let err = client.query("up", None).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(
            err,
            PromError::Unreachable {
                url: format!("http://{addr}"),
                message: "no answer within 200ms".into()
            }
        );
    }
}
