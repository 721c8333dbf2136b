//! The HTTP side of the client, on its thread: the four REST calls of the Confluent API that
//! snapfeed uses (register, look up under a subject, compatibility, schema by id) and
//! `GET /subjects` for the preflight.

use super::client::{Answer, Call, RegistryError};

/// The media type of the Confluent REST API.
const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// The HTTP side, on the client's thread.
pub(super) struct Worker {
    pub(super) client: reqwest::Client,
    pub(super) base: String,
    pub(super) authorization: Option<String>,
}

impl Worker {
    pub(super) async fn call(&self, call: Call) -> Result<Answer, RegistryError> {
        match call {
            Call::Register { subject, schema } => {
                let path = format!("/subjects/{}/versions", encode_path(&subject));
                let body = self
                    .send(reqwest::Method::POST, &path, Some(&schema))
                    .await?;
                id_of(&body, &path).map(Answer::Id)
            }
            Call::Lookup { subject, schema } => {
                let path = format!("/subjects/{}", encode_path(&subject));
                let body = self
                    .send(reqwest::Method::POST, &path, Some(&schema))
                    .await?;
                id_of(&body, &path).map(Answer::Id)
            }
            Call::Compatibility { subject, schema } => {
                let path = format!(
                    "/compatibility/subjects/{}/versions/latest?verbose=true",
                    encode_path(&subject)
                );
                let body = match self.send(reqwest::Method::POST, &path, Some(&schema)).await {
                    Ok(body) => body,
                    // No subject yet: anything is compatible with nothing.
                    Err(error) if error.is_not_found() => {
                        return Ok(Answer::Compatible(true, vec![]))
                    }
                    Err(error) => return Err(error),
                };
                let compatible = body["is_compatible"].as_bool().unwrap_or(false);
                let messages = body["messages"]
                    .as_array()
                    .map(|m| {
                        m.iter()
                            .map(|v| v.as_str().unwrap_or("").to_string())
                            .collect()
                    })
                    .unwrap_or_default();
                Ok(Answer::Compatible(compatible, messages))
            }
            Call::Subjects => {
                let body = self.send(reqwest::Method::GET, "/subjects", None).await?;
                match body.as_array() {
                    Some(subjects) => Ok(Answer::Count(subjects.len())),
                    None => Err(RegistryError::Protocol {
                        what: "GET /subjects".into(),
                        detail: "not a JSON array".into(),
                    }),
                }
            }
            Call::SchemaById { id } => {
                let path = format!("/schemas/ids/{id}");
                match self.send(reqwest::Method::GET, &path, None).await {
                    Ok(body) => match body["schema"].as_str() {
                        Some(text) => Ok(Answer::Schema(text.to_string())),
                        None => Err(RegistryError::Protocol {
                            what: path,
                            detail: "no \"schema\"".into(),
                        }),
                    },
                    Err(error) if error.is_unknown_schema() => Ok(Answer::Missing),
                    Err(error) => Err(error),
                }
            }
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        schema: Option<&str>,
    ) -> Result<serde_json::Value, RegistryError> {
        let what = format!("{method} {path}");
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header(reqwest::header::ACCEPT, CONTENT_TYPE);
        if let Some(schema) = schema {
            let body = serde_json::json!({ "schema": schema, "schemaType": "AVRO" });
            request = request
                .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
                .body(body.to_string());
        }
        if let Some(authorization) = &self.authorization {
            request = request.header(reqwest::header::AUTHORIZATION, authorization);
        }
        let unreachable = |error: reqwest::Error| RegistryError::Unreachable {
            url: self.base.clone(),
            detail: error.without_url().to_string(),
        };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(unreachable)?;
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        if (200..300).contains(&status) {
            return Ok(body);
        }
        Err(RegistryError::Status {
            what,
            status,
            code: body["error_code"].as_i64(),
            message: body["message"].as_str().map_or_else(
                || format!("{} bytes without a message", bytes.len()),
                str::to_string,
            ),
        })
    }
}

fn id_of(body: &serde_json::Value, path: &str) -> Result<u32, RegistryError> {
    body["id"]
        .as_u64()
        .and_then(|id| u32::try_from(id).ok())
        .ok_or_else(|| RegistryError::Protocol {
            what: path.to_string(),
            detail: "no numeric \"id\"".into(),
        })
}

/// Percent-encodes a subject for a URL path (topic names are `[a-zA-Z0-9._-]`, record names
/// add nothing else, but a subject is the registry's key: encode anything unusual).
fn encode_path(subject: &str) -> String {
    let mut out = String::with_capacity(subject.len());
    for byte in subject.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_path_encoded() {
        assert_eq!(
            encode_path("lab-results.changes-value"),
            "lab-results.changes-value"
        );
        assert_eq!(encode_path("a b/c"), "a%20b%2Fc");
    }
}
