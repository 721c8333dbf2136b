//! The stub registry against a minimal HTTP/1.1 client: the REST subset and the controls.

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpStream;

use super::*;
use crate::raw_http::{send, RawResponse};

const AVRO_V1: &str = r#"{"type":"record","name":"Lab","fields":[{"name":"id","type":"string"}]}"#;
const AVRO_V1_SPACED: &str =
    "{ \"type\": \"record\",\n  \"name\": \"Lab\", \"fields\": [ {\"name\": \"id\", \"type\": \"string\"} ] }";
const AVRO_V2: &str = r#"{"type":"record","name":"Lab","fields":[{"name":"id","type":"string"},{"name":"n","type":"int","default":0}]}"#;

/// Runs a test body with an upper bound, so a hung server fails instead of hanging.
async fn bounded(test: impl Future<Output = ()>) {
    tokio::time::timeout(Duration::from_secs(20), test)
        .await
        .expect("test finished within 20 s");
}

async fn get(registry: &StubRegistry, path: &str) -> RawResponse {
    send(registry.addr(), "GET", path, &[], "").await.unwrap()
}

async fn post_schema(registry: &StubRegistry, path: &str, schema: &str) -> RawResponse {
    let body = json!({ "schema": schema, "schemaType": "AVRO" }).to_string();
    send(
        registry.addr(),
        "POST",
        path,
        &[("Content-Type", CONTENT_TYPE)],
        &body,
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn same_text_under_two_subjects_gets_one_id() {
    bounded(async {
        let registry = StubRegistry::start().await;
        assert_eq!(
            registry.url(),
            format!("http://127.0.0.1:{}", registry.addr().port())
        );
        let first = post_schema(&registry, "/subjects/labs-value/versions", AVRO_V1).await;
        assert_eq!(first.status, 200);
        assert_eq!(first.header("content-type"), Some(CONTENT_TYPE));
        assert_eq!(first.json(), json!({ "id": 1 }));
        // Percent-encoded subject, different whitespace: same id, new subject.
        let other = post_schema(
            &registry,
            "/subjects/other%2Dvalue/versions",
            AVRO_V1_SPACED,
        )
        .await;
        assert_eq!(other.json(), json!({ "id": 1 }));
        // Again under the first subject: no new version.
        let again = post_schema(&registry, "/subjects/labs-value/versions", AVRO_V1).await;
        assert_eq!(again.json(), json!({ "id": 1 }));
        let v2 = post_schema(&registry, "/subjects/labs-value/versions", AVRO_V2).await;
        assert_eq!(v2.json(), json!({ "id": 2 }));

        assert_eq!(registry.subjects(), ["labs-value", "other-value"]);
        assert_eq!(registry.subject_ids("labs-value"), [1, 2]);
        assert_eq!(registry.subject_ids("other-value"), [1]);
        assert_eq!(
            get(&registry, "/subjects").await.json(),
            json!(["labs-value", "other-value"])
        );
        assert_eq!(
            get(&registry, "/subjects/labs-value/versions").await.json(),
            json!([1, 2])
        );
        let latest = get(&registry, "/subjects/labs-value/versions/latest").await;
        assert_eq!(
            latest.json(),
            json!({ "subject": "labs-value", "id": 2, "version": 2, "schema": AVRO_V2 })
        );
        assert_eq!(
            get(&registry, "/subjects/labs-value/versions/3")
                .await
                .json()["error_code"],
            40402
        );
        assert_eq!(
            get(&registry, "/subjects/nope/versions").await.json()["error_code"],
            40401
        );
        assert_eq!(
            get(&registry, "/schemas/ids/1/versions").await.json(),
            json!([
                { "subject": "labs-value", "version": 1 },
                { "subject": "other-value", "version": 1 },
            ])
        );
        assert_eq!(
            get(&registry, "/config").await.json(),
            json!({ "compatibilityLevel": "BACKWARD" })
        );
        let unknown = get(&registry, "/nothing/here").await;
        assert_eq!(unknown.status, 404);
        assert_eq!(
            unknown.json(),
            json!({ "error_code": 404, "message": "not found" })
        );

        let invalid = post_schema(&registry, "/subjects/labs-value/versions", "{not json").await;
        assert_eq!(invalid.status, 422);
        assert_eq!(invalid.json()["error_code"], 42201);
        assert_eq!(registry.request_count(), 13);
        registry.stop().await;
    })
    .await;
}

#[tokio::test]
async fn lookup_and_get_by_id() {
    bounded(async {
        let registry = StubRegistry::start().await;
        let id = registry.register("labs-value", AVRO_V1);
        assert_eq!(id, 1);
        assert_eq!(registry.schema_text(id).as_deref(), Some(AVRO_V1));

        let found = post_schema(&registry, "/subjects/labs-value", AVRO_V1_SPACED).await;
        assert_eq!(found.status, 200);
        assert_eq!(
            found.json(),
            json!({ "subject": "labs-value", "id": 1, "version": 1, "schema": AVRO_V1 })
        );
        let missing = post_schema(&registry, "/subjects/labs-value", AVRO_V2).await;
        assert_eq!(missing.status, 404);
        assert_eq!(
            missing.json(),
            json!({ "error_code": 40403, "message": "Schema not found" })
        );
        let no_subject = post_schema(&registry, "/subjects/unknown", AVRO_V1).await;
        assert_eq!(no_subject.status, 404);
        assert_eq!(
            no_subject.json(),
            json!({ "error_code": 40401, "message": "Subject 'unknown' not found." })
        );

        let by_id = get(
            &registry,
            "/schemas/ids/1?fetchMaxId=false&subject=labs-value",
        )
        .await;
        assert_eq!(by_id.status, 200);
        assert_eq!(by_id.header("content-type"), Some(CONTENT_TYPE));
        assert_eq!(by_id.json(), json!({ "schema": AVRO_V1 }));
        let unknown = get(&registry, "/schemas/ids/7").await;
        assert_eq!(unknown.status, 404);
        assert_eq!(
            unknown.json(),
            json!({ "error_code": 40403, "message": "Schema 7 not found" })
        );
        let requests = registry.requests();
        assert_eq!(requests.len(), 5);
        assert_eq!(requests[3].method, "GET");
        assert_eq!(
            requests[3].path,
            "/schemas/ids/1?fetchMaxId=false&subject=labs-value"
        );
        assert_eq!(requests[3].status, 200);
        assert_eq!(requests[3].authorization, None);
    })
    .await;
}

#[tokio::test]
async fn forced_incompatible_subject_refuses_new_schemas() {
    bounded(async {
        let registry = StubRegistry::start().await;
        registry.register("labs-value", AVRO_V1);
        let compatible = post_schema(
            &registry,
            "/compatibility/subjects/labs-value/versions/latest?verbose=true",
            AVRO_V2,
        )
        .await;
        assert_eq!(
            compatible.json(),
            json!({ "is_compatible": true, "messages": [] })
        );

        registry.force_incompatible("labs-value", "field n removed");
        let refused = post_schema(&registry, "/subjects/labs-value/versions", AVRO_V2).await;
        assert_eq!(refused.status, 409);
        assert_eq!(
            refused.json(),
            json!({
                "error_code": 409,
                "message": "Schema being registered is incompatible with an earlier schema \
                            for subject \"labs-value\", details: [field n removed]",
            })
        );
        let check = post_schema(
            &registry,
            "/compatibility/subjects/labs-value/versions/latest?verbose=true",
            AVRO_V2,
        )
        .await;
        assert_eq!(
            check.json(),
            json!({ "is_compatible": false, "messages": ["field n removed"] })
        );
        // Already there: its id comes back.
        let existing = post_schema(&registry, "/subjects/labs-value/versions", AVRO_V1).await;
        assert_eq!(existing.json(), json!({ "id": 1 }));
        assert_eq!(registry.subject_ids("labs-value"), [1]);
        let fresh = post_schema(
            &registry,
            "/compatibility/subjects/fresh-value/versions/latest",
            AVRO_V2,
        )
        .await;
        assert_eq!(fresh.json()["is_compatible"], true);
    })
    .await;
}

#[tokio::test]
async fn injected_failures_then_success() {
    bounded(async {
        let registry = StubRegistry::start().await;
        let id = registry.register("labs-value", AVRO_V1);
        registry.fail_next(2, 503);
        for _ in 0..2 {
            let failed = get(&registry, "/schemas/ids/1").await;
            assert_eq!(failed.status, 503);
            assert_eq!(
                failed.json(),
                json!({ "error_code": 50003, "message": "stub registry: injected failure" })
            );
        }
        let ok = get(&registry, "/schemas/ids/1").await;
        assert_eq!(ok.status, 200);
        assert_eq!(ok.json()["schema"], AVRO_V1);
        assert_eq!(
            registry
                .requests()
                .iter()
                .map(|r| r.status)
                .collect::<Vec<_>>(),
            [503, 503, 200]
        );
        assert_eq!(id, 1);
    })
    .await;
}

#[tokio::test]
async fn forgotten_id_is_not_found() {
    bounded(async {
        let registry = StubRegistry::start().await;
        let id = registry.register("labs-value", AVRO_V1);
        registry.forget(id);
        let gone = get(&registry, "/schemas/ids/1").await;
        assert_eq!(gone.status, 404);
        assert_eq!(gone.json()["error_code"], 40403);
        assert_eq!(get(&registry, "/schemas/ids/1/versions").await.status, 404);
        assert_eq!(registry.schema_text(id), None);
        assert_eq!(registry.subject_ids("labs-value"), [id]);
    })
    .await;
}

#[tokio::test]
async fn credentials_are_required_when_set() {
    bounded(async {
        let registry = StubRegistry::start().await;
        registry.require_basic("snapfeed", "secret");
        let refused = get(&registry, "/subjects").await;
        assert_eq!(refused.status, 401);
        assert_eq!(
            refused.json(),
            json!({ "error_code": 401, "message": "Unauthorized" })
        );
        let basic = "Basic c25hcGZlZWQ6c2VjcmV0";
        let ok = send(
            registry.addr(),
            "GET",
            "/subjects",
            &[("Authorization", basic)],
            "",
        )
        .await
        .unwrap();
        assert_eq!(ok.status, 200);
        assert_eq!(registry.requests()[1].authorization.as_deref(), Some(basic));

        registry.require_bearer("tok");
        let wrong = send(
            registry.addr(),
            "GET",
            "/subjects",
            &[("Authorization", basic)],
            "",
        )
        .await
        .unwrap();
        assert_eq!(wrong.status, 401);
        let bearer = send(
            registry.addr(),
            "GET",
            "/subjects",
            &[("Authorization", "Bearer tok")],
            "",
        )
        .await
        .unwrap();
        assert_eq!(bearer.status, 200);
    })
    .await;
}

#[tokio::test]
async fn go_down_refuses_connections_and_come_up_keeps_state() {
    bounded(async {
        let mut registry = StubRegistry::start().await;
        let addr = registry.addr();
        let id = registry.register("labs-value", AVRO_V1);

        registry.go_down().await;
        let refused = TcpStream::connect(addr).await.unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);

        registry.come_up().await;
        assert_eq!(registry.addr(), addr);
        let by_id = get(&registry, "/schemas/ids/1").await;
        assert_eq!(by_id.json(), json!({ "schema": AVRO_V1 }));
        let again = post_schema(&registry, "/subjects/labs-value/versions", AVRO_V1).await;
        assert_eq!(again.json(), json!({ "id": id }));

        registry.stop().await;
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "stop closes the port"
        );
    })
    .await;
}

#[test]
fn percent_decoding() {
    assert_eq!(
        percent_decode("labs%2Dvalue%2fx+y%zz%4"),
        "labs-value/x+y%zz%4"
    );
}
