//! Conformance of `parse_payload` with the real docker-worker payload schema.
//!
//! The schema (`/work/shared/taskcluster/schemas/docker-worker/v1/payload.json`, draft-06) is
//! compiled with the `jsonschema` crate, format validation on, and each payload below must be
//! accepted or rejected by both. The few places where we deliberately disagree with the schema
//! are in their own table, each with its reason.

use std::collections::BTreeSet;

use docker_worker_actors::payload::{parse_date_time, parse_payload, Feature, PayloadErrors};
use jsonschema::error::ValidationErrorKind;
use jsonschema::Validator;
use serde_json::{json, Value};

const SCHEMA_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/taskcluster/schemas/docker-worker/v1/payload.json"
);

fn schema_value() -> Value {
    let text = std::fs::read_to_string(SCHEMA_PATH).unwrap_or_else(|error| {
        panic!("cannot read the docker-worker payload schema at {SCHEMA_PATH}: {error}")
    });
    let schema: Value =
        serde_json::from_str(&text).unwrap_or_else(|error| panic!("{SCHEMA_PATH} is not JSON: {error}"));
    assert_eq!(
        schema["$schema"], "http://json-schema.org/draft-06/schema#",
        "{SCHEMA_PATH} is no longer a draft-06 schema; revisit this test"
    );
    schema
}

fn schema() -> Validator {
    // Format validation is off by default for draft-06; the schema's `date-time` needs it.
    jsonschema::draft6::options()
        .should_validate_formats(true)
        .build(&schema_value())
        .unwrap_or_else(|error| panic!("{SCHEMA_PATH} does not compile: {error}"))
}

/// A valid minimal payload with `fields` added or replaced.
fn with(fields: Value) -> Value {
    let mut payload = json!({"image": "ubuntu:22.04", "maxRunTime": 600});
    let (Value::Object(payload_map), Value::Object(fields)) = (&mut payload, fields) else {
        panic!("with() takes an object");
    };
    payload_map.extend(fields);
    payload
}

/// A valid minimal payload without `field`.
fn without(field: &str) -> Value {
    let mut payload = with(json!({}));
    payload.as_object_mut().map(|map| map.remove(field));
    payload
}

fn artifact(spec: Value) -> Value {
    with(json!({"artifacts": {"public/build.tar.gz": spec}}))
}

fn expires(text: &str) -> Value {
    artifact(json!({"type": "file", "path": "/build.tar.gz", "expires": text}))
}

/// Payloads that the schema and `parse_payload` must agree on: (name, valid?, payload).
fn cases() -> Vec<(&'static str, bool, Value)> {
    vec![
        // unit/test_task_validation.js
        ("valid minimal payload", true, with(json!({"command": ["ls"]}))),
        ("missing maxRunTime", false, without("maxRunTime")),
        ("missing command", true, with(json!({}))),
        (
            "docker-image object",
            true,
            with(json!({"image": {"type": "docker-image", "name": "ubuntu:22.04"}})),
        ),
        (
            "docker image string",
            true,
            with(json!({"image": "taskcluster/test-ubuntu"})),
        ),
        (
            "image type dockerimage",
            false,
            with(json!({"image": {"type": "dockerimage", "name": "ubuntu"}})),
        ),
        (
            "indexed-image",
            true,
            with(
                json!({"image": {"type": "indexed-image", "namespace": "garbage.docker-worker-tests.docker-images", "path": "public/image.tar"}}),
            ),
        ),
        (
            "indexed-image without path",
            false,
            with(json!({"image": {"type": "indexed-image", "namespace": "a.b"}})),
        ),
        // integration/invalid_payload_schema_test.js and invalid_feature_test.js
        ("maxRunTime hello", false, with(json!({"maxRunTime": "hello"}))),
        (
            "retry exit status as string",
            false,
            with(json!({"onExitStatus": {"retry": ["1"]}})),
        ),
        (
            "multiple errors",
            false,
            with(json!({"maxRunTime": "hello", "onExitStatus": {"retry": ["1"]}})),
        ),
        (
            "unknown feature",
            false,
            with(json!({"features": {"invalidFeature": true}})),
        ),
        // the payload as a whole
        (
            "payload is an array",
            false,
            json!([{"image": "ubuntu", "maxRunTime": 1}]),
        ),
        ("payload is a string", false, json!("ubuntu")),
        ("payload is null", false, json!(null)),
        ("empty payload", false, json!({})),
        ("missing image", false, without("image")),
        ("unknown top-level field cmd", false, with(json!({"cmd": ["ls"]}))),
        (
            "removed field encryptedEnv",
            false,
            with(json!({"encryptedEnv": ["x"]})),
        ),
        (
            "everything set",
            true,
            with(json!({
                "image": {"type": "task-image", "taskId": "csTL863FQYCK82XEFjMhMw", "path": "public/image.tar.zst"},
                "command": ["/bin/bash", "-c", "echo $WOOTBAR"],
                "env": {"WOOTBAR": "is woot", "EMPTY": ""},
                "maxRunTime": 3600,
                "log": "private/docker-worker-tests/logs/live.log",
                "cache": {"docker-worker-garbage-caches-tmp-obj-dir": "/tmp-obj-dir"},
                "capabilities": {"privileged": true, "disableSeccomp": false, "devices": {"loopbackVideo": true, "loopbackAudio": true, "hostSharedMemory": false, "kvm": true}},
                "onExitStatus": {"retry": [36], "purgeCaches": [36, -1]},
                "artifacts": {
                    "public/xfoo": {"type": "file", "path": "/artifacts/xfoo.txt", "expires": "2016-05-28T16:12:56.693817Z"},
                    "public/dir": {"type": "directory", "path": "/xfoo/"},
                    "public/vol": {"type": "volume", "path": "/vol"},
                },
                "supersederUrl": "https://superseder.example.com/",
                "features": {"localLiveLog": true, "artifacts": true, "bulkLog": true, "chainOfTrust": true, "taskclusterProxy": true, "interactive": false, "allowPtrace": false},
            })),
        ),
        // maxRunTime
        ("maxRunTime 1", true, with(json!({"maxRunTime": 1}))),
        ("maxRunTime 604800", true, with(json!({"maxRunTime": 604800}))),
        ("maxRunTime 5.0", true, with(json!({"maxRunTime": 5.0}))),
        ("maxRunTime 0", false, with(json!({"maxRunTime": 0}))),
        ("maxRunTime -1", false, with(json!({"maxRunTime": -1}))),
        ("maxRunTime 1.5", false, with(json!({"maxRunTime": 1.5}))),
        ("maxRunTime 0.5", false, with(json!({"maxRunTime": 0.5}))),
        (
            "maxRunTime as numeric string",
            false,
            with(json!({"maxRunTime": "600"})),
        ),
        ("maxRunTime null", false, with(json!({"maxRunTime": null}))),
        // image
        ("image number", false, with(json!({"image": 5}))),
        ("image null", false, with(json!({"image": null}))),
        ("image array", false, with(json!({"image": ["ubuntu"]}))),
        (
            "image object without type",
            false,
            with(json!({"image": {"name": "ubuntu"}})),
        ),
        (
            "image type not a string",
            false,
            with(json!({"image": {"type": 1, "name": "ubuntu"}})),
        ),
        (
            "docker-image without name",
            false,
            with(json!({"image": {"type": "docker-image"}})),
        ),
        (
            "docker-image name not a string",
            false,
            with(json!({"image": {"type": "docker-image", "name": 3}})),
        ),
        (
            "docker-image with extra key",
            false,
            with(json!({"image": {"type": "docker-image", "name": "ubuntu", "tag": "latest"}})),
        ),
        (
            "indexed-image without namespace",
            false,
            with(json!({"image": {"type": "indexed-image", "path": "public/image.tar"}})),
        ),
        (
            "indexed-image namespace not a string",
            false,
            with(json!({"image": {"type": "indexed-image", "namespace": 1, "path": "p"}})),
        ),
        (
            "indexed-image with taskId",
            false,
            with(json!({"image": {"type": "indexed-image", "namespace": "a", "path": "p", "taskId": "t"}})),
        ),
        (
            "task-image",
            true,
            with(
                json!({"image": {"type": "task-image", "taskId": "csTL863FQYCK82XEFjMhMw", "path": "public/image.tar"}}),
            ),
        ),
        (
            "task-image without taskId",
            false,
            with(json!({"image": {"type": "task-image", "path": "public/image.tar"}})),
        ),
        (
            "task-image with name instead of path",
            false,
            with(json!({"image": {"type": "task-image", "taskId": "t", "name": "x"}})),
        ),
        (
            "garbage-image type",
            false,
            with(json!({"image": {"type": "garbage-image", "name": "x"}})),
        ),
        // command, env, log, cache, supersederUrl
        ("empty command", true, with(json!({"command": []}))),
        ("command is a string", false, with(json!({"command": "ls -lah"}))),
        (
            "command item is a number",
            false,
            with(json!({"command": ["/bin/sh", 1]})),
        ),
        ("env empty", true, with(json!({"env": {}}))),
        (
            "env with odd names",
            true,
            with(json!({"env": {"A.B": "1", "": "x", "lower": "y"}})),
        ),
        ("env value a number", false, with(json!({"env": {"PORT": 80}}))),
        ("env value null", false, with(json!({"env": {"X": null}}))),
        ("env is an array", false, with(json!({"env": ["A=1"]}))),
        ("log custom name", true, with(json!({"log": "live.log"}))),
        ("log empty", true, with(json!({"log": ""}))),
        ("log a number", false, with(json!({"log": 1}))),
        (
            "cache entries",
            true,
            with(json!({"cache": {"a::b": "/a", "level-3-checkouts": "/builds"}})),
        ),
        (
            "cache mount point a bool",
            false,
            with(json!({"cache": {"c": true}})),
        ),
        ("cache is a string", false, with(json!({"cache": "c"}))),
        (
            "supersederUrl not a URL",
            true,
            with(json!({"supersederUrl": "not a url"})),
        ),
        ("supersederUrl a number", false, with(json!({"supersederUrl": 1}))),
        // capabilities
        ("capabilities empty", true, with(json!({"capabilities": {}}))),
        (
            "capabilities.devices empty",
            true,
            with(json!({"capabilities": {"devices": {}}})),
        ),
        (
            "capabilities privileged as string",
            false,
            with(json!({"capabilities": {"privileged": "true"}})),
        ),
        (
            "capabilities disableSeccomp as number",
            false,
            with(json!({"capabilities": {"disableSeccomp": 1}})),
        ),
        (
            "capabilities unknown key",
            false,
            with(json!({"capabilities": {"sysAdmin": true}})),
        ),
        (
            "capabilities is a bool",
            false,
            with(json!({"capabilities": true})),
        ),
        (
            "devices unknown device",
            false,
            with(json!({"capabilities": {"devices": {"gpu": true}}})),
        ),
        (
            "devices kvm as number",
            false,
            with(json!({"capabilities": {"devices": {"kvm": 1}}})),
        ),
        (
            "devices is an array",
            false,
            with(json!({"capabilities": {"devices": ["kvm"]}})),
        ),
        // onExitStatus
        ("onExitStatus empty", true, with(json!({"onExitStatus": {}}))),
        (
            "retry 36.0",
            true,
            with(json!({"onExitStatus": {"retry": [36.0]}})),
        ),
        (
            "negative exit status",
            true,
            with(json!({"onExitStatus": {"purgeCaches": [-1]}})),
        ),
        (
            "purgeCaches 1.5",
            false,
            with(json!({"onExitStatus": {"purgeCaches": [1.5]}})),
        ),
        (
            "retry not an array",
            false,
            with(json!({"onExitStatus": {"retry": 36}})),
        ),
        (
            "onExitStatus unknown key",
            false,
            with(json!({"onExitStatus": {"fail": [1]}})),
        ),
        (
            "onExitStatus is an array",
            false,
            with(json!({"onExitStatus": [36]})),
        ),
        // artifacts
        ("artifacts empty", true, with(json!({"artifacts": {}}))),
        (
            "artifact file without expires",
            true,
            artifact(json!({"type": "file", "path": "/a"})),
        ),
        (
            "artifact directory",
            true,
            artifact(json!({"type": "directory", "path": "/a/"})),
        ),
        (
            "artifact volume",
            true,
            artifact(json!({"type": "volume", "path": "/a"})),
        ),
        (
            "artifact relative path",
            true,
            artifact(json!({"type": "file", "path": "username.txt"})),
        ),
        ("artifact missing path", false, artifact(json!({"type": "file"}))),
        ("artifact missing type", false, artifact(json!({"path": "/a"}))),
        (
            "artifact type link",
            false,
            artifact(json!({"type": "link", "path": "/a"})),
        ),
        (
            "artifact type a number",
            false,
            artifact(json!({"type": 1, "path": "/a"})),
        ),
        (
            "artifact path a number",
            false,
            artifact(json!({"type": "file", "path": 1})),
        ),
        (
            "artifact unknown key",
            false,
            artifact(json!({"type": "file", "path": "/a", "contentType": "text/plain"})),
        ),
        ("artifact is a string", false, artifact(json!("/a"))),
        (
            "artifacts is an array",
            false,
            with(json!({"artifacts": [{"type": "file", "path": "/a"}]})),
        ),
        (
            "expires with Z and fraction",
            true,
            expires("2016-05-28T16:12:56.693817Z"),
        ),
        ("expires with offset", true, expires("2030-01-01T02:00:00+02:00")),
        ("expires lowercase t and z", true, expires("2030-01-01t00:00:00z")),
        ("expires leap second", true, expires("2016-12-31T23:59:60Z")),
        (
            "expires leap second with offset",
            true,
            expires("2016-12-31T15:59:60-08:00"),
        ),
        (
            "expires leap second not at 23:59 UTC",
            false,
            expires("2016-12-31T22:59:60Z"),
        ),
        ("expires with a space", false, expires("2016-05-28 16:12:56Z")),
        ("expires without offset", false, expires("2016-05-28T16:12:56")),
        ("expires date only", false, expires("2016-05-28")),
        (
            "expires offset without colon",
            false,
            expires("2016-05-28T16:12:56+0100"),
        ),
        ("expires February 30", false, expires("2016-02-30T00:00:00Z")),
        ("expires hour 24", false, expires("2016-05-28T24:00:00Z")),
        ("expires in words", false, expires("tomorrow")),
        (
            "expires a number",
            false,
            artifact(json!({"type": "file", "path": "/a", "expires": 1464451976})),
        ),
        // features
        ("features empty", true, with(json!({"features": {}}))),
        (
            "features all off",
            true,
            with(json!({"features": {"localLiveLog": false, "artifacts": false}})),
        ),
        (
            "feature as string",
            false,
            with(json!({"features": {"bulkLog": "true"}})),
        ),
        (
            "feature removed long ago (testdroidProxy)",
            false,
            with(json!({"features": {"testdroidProxy": true}})),
        ),
        (
            "features is an array",
            false,
            with(json!({"features": ["bulkLog"]})),
        ),
    ]
}

/// A deliberate divergence: the schema's verdict, and the error we give instead (or `None`
/// when we accept what the schema rejects).
struct Divergence {
    name: &'static str,
    reason: &'static str,
    payload: Value,
    schema_accepts: bool,
    our_error: Option<(&'static str, &'static str)>,
}

fn divergences() -> Vec<Divergence> {
    let max_run_time =
        "docker-worker capped maxRunTime at one week as a sanity check; the schema has no maximum";
    let empty_image =
        "an empty image name can never be pulled, so it is a malformed payload rather than a failed pull";
    let legacy = "docker-worker's older feature, dropped from the current schema; accepted so existing tasks still parse";
    let mut table = vec![
        Divergence {
            name: "maxRunTime 604801",
            reason: max_run_time,
            payload: with(json!({"maxRunTime": 604801})),
            schema_accepts: true,
            our_error: Some(("maxRunTime", "must be an integer between 1 and 604800")),
        },
        Divergence {
            name: "maxRunTime 1e12",
            reason: max_run_time,
            payload: with(json!({"maxRunTime": 1e12})),
            schema_accepts: true,
            our_error: Some(("maxRunTime", "must be an integer between 1 and 604800")),
        },
        Divergence {
            name: "empty image string",
            reason: empty_image,
            payload: with(json!({"image": ""})),
            schema_accepts: true,
            our_error: Some(("image", "must not be empty")),
        },
        Divergence {
            name: "empty docker-image name",
            reason: empty_image,
            payload: with(json!({"image": {"type": "docker-image", "name": ""}})),
            schema_accepts: true,
            our_error: Some(("image.name", "must not be empty")),
        },
        Divergence {
            name: "exit status past i64",
            reason: "exit statuses are kept as i64 (Docker's StatusCode); the schema allows any integer",
            payload: with(json!({"onExitStatus": {"retry": [9_223_372_036_854_775_808u64]}})),
            schema_accepts: true,
            our_error: Some((
                "onExitStatus.retry[0]",
                "must be an integer between -9223372036854775808 and 9223372036854775807",
            )),
        },
    ];
    for feature in Feature::ALL.into_iter().filter(|feature| !feature.in_schema()) {
        table.push(Divergence {
            name: feature.name(),
            reason: legacy,
            payload: with(json!({"features": {feature.name(): true}})),
            schema_accepts: false,
            our_error: None,
        });
    }
    table
}

fn describe(
    validator: &Validator,
    payload: &Value,
    ours: &Result<impl std::fmt::Debug, PayloadErrors>,
) -> String {
    let schema_errors: Vec<String> = validator
        .iter_errors(payload)
        .map(|error| format!("{} at {:?}", error, error.instance_path().as_str()))
        .collect();
    let ours = match ours {
        Ok(_) => "accepted".to_owned(),
        Err(errors) => errors.to_string(),
    };
    format!("payload: {payload}\nschema errors: {schema_errors:#?}\nparse_payload: {ours}")
}

/// The top-level payload fields the schema reports errors in (`payload` for the whole).
fn schema_error_roots(validator: &Validator, payload: &Value) -> BTreeSet<String> {
    let mut roots = BTreeSet::new();
    for error in validator.iter_errors(payload) {
        let path = error.instance_path().as_str().to_owned();
        if let Some(first) = path.split('/').nth(1) {
            roots.insert(first.replace("~1", "/").replace("~0", "~"));
            continue;
        }
        match error.kind() {
            ValidationErrorKind::Required { property } => {
                roots.insert(property.as_str().unwrap_or_default().to_owned());
            }
            ValidationErrorKind::AdditionalProperties { unexpected } => {
                roots.extend(unexpected.iter().cloned());
            }
            _ => {
                roots.insert("payload".to_owned());
            }
        }
    }
    roots
}

/// The top-level field an error names: `image` for `image.type`, `weird key` for `["weird key"]`.
fn root_of(field: &str) -> String {
    if let Some(rest) = field.strip_prefix('[') {
        let mut quoted = serde_json::Deserializer::from_str(rest).into_iter::<String>();
        return match quoted.next() {
            Some(Ok(key)) => key,
            _ => panic!("field {field:?} opens a bracket without a JSON string"),
        };
    }
    field.split(['.', '[']).next().unwrap_or_default().to_owned()
}

/// Every error names its field: a non-empty field leads the message, and its root is the
/// payload, a schema property, or the unknown key the error is about.
fn assert_errors_name_fields(name: &str, payload: &Value, errors: &PayloadErrors) {
    let properties = schema_value()["properties"]
        .as_object()
        .map(|map| map.keys().cloned().collect::<BTreeSet<_>>())
        .unwrap_or_default();
    assert!(!errors.0.is_empty(), "{name}: rejected without any error");
    for error in errors.iter() {
        assert!(
            !error.field.is_empty(),
            "{name}: error without a field: {error:?}"
        );
        assert!(
            !error.message.is_empty(),
            "{name}: error without a message: {error:?}"
        );
        assert!(
            error.to_string().starts_with(&format!("{}: ", error.field)),
            "{name}: {error} does not start with its field"
        );
        let root = root_of(&error.field);
        let known = root == "payload" || properties.contains(&root);
        let unknown_key = error.message == "unknown field"
            && payload.as_object().is_some_and(|map| map.contains_key(&root));
        assert!(
            known || unknown_key,
            "{name}: {error} names no payload field (root {root:?})"
        );
    }
}

#[test]
fn schema_and_parse_payload_agree() {
    let validator = schema();
    let cases = cases();
    assert!(cases.len() >= 40, "only {} cases", cases.len());
    let mut names = BTreeSet::new();
    for (name, expect_valid, payload) in &cases {
        assert!(names.insert(*name), "duplicate case name {name}");
        let ours = parse_payload(payload);
        let schema_valid = validator.is_valid(payload);
        assert_eq!(
            schema_valid,
            *expect_valid,
            "case {name:?}: the schema does not give the expected verdict\n{}",
            describe(&validator, payload, &ours)
        );
        assert_eq!(
            ours.is_ok(),
            schema_valid,
            "case {name:?}: parse_payload and the schema disagree\n{}",
            describe(&validator, payload, &ours)
        );
        if let Err(errors) = &ours {
            assert_errors_name_fields(name, payload, errors);
            let ours: BTreeSet<String> = errors.iter().map(|error| root_of(&error.field)).collect();
            assert_eq!(
                ours,
                schema_error_roots(&validator, payload),
                "case {name:?}: errors are in different top-level fields\n{}",
                describe(&validator, payload, &parse_payload(payload))
            );
        }
    }
    // Both verdicts must be well represented.
    let valid = cases.iter().filter(|(_, valid, _)| *valid).count();
    assert!(
        valid >= 15 && cases.len() - valid >= 25,
        "{valid} valid of {}",
        cases.len()
    );
}

#[test]
fn deliberate_divergences() {
    let validator = schema();
    for divergence in divergences() {
        let Divergence {
            name,
            reason,
            payload,
            schema_accepts,
            our_error,
        } = divergence;
        let ours = parse_payload(&payload);
        let context = format!(
            "divergence {name:?} ({reason})\n{}",
            describe(&validator, &payload, &ours)
        );
        assert_eq!(validator.is_valid(&payload), schema_accepts, "{context}");
        match (our_error, &ours) {
            (Some((field, message)), Err(errors)) => {
                assert_eq!(errors.0.len(), 1, "{context}");
                assert_eq!(errors.0[0].field, field, "{context}");
                assert_eq!(errors.0[0].message, message, "{context}");
                assert_errors_name_fields(name, &payload, errors);
                assert!(schema_accepts, "{context}: a divergence must flip the verdict");
            }
            (None, Ok(parsed)) => {
                assert!(!schema_accepts, "{context}: a divergence must flip the verdict");
                let feature = Feature::from_name(name).unwrap_or_else(|| panic!("{context}"));
                assert!(parsed.features.enabled(feature), "{context}");
            }
            _ => panic!("{context}: expected {our_error:?}"),
        }
    }
}

#[test]
fn the_schema_knows_exactly_the_in_schema_features() {
    let schema = schema_value();
    let in_schema: BTreeSet<&str> = schema["properties"]["features"]["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("{SCHEMA_PATH} has no features.properties"))
        .keys()
        .map(String::as_str)
        .collect();
    let ours: BTreeSet<&str> = Feature::ALL
        .into_iter()
        .filter(|feature| feature.in_schema())
        .map(Feature::name)
        .collect();
    assert_eq!(ours, in_schema);
}

#[test]
fn date_time_format_matches_jsonschema() {
    let validator = jsonschema::draft6::options()
        .should_validate_formats(true)
        .build(&json!({"type": "string", "format": "date-time"}))
        .unwrap_or_else(|error| panic!("date-time schema does not compile: {error}"));
    let samples = [
        "2016-05-28T16:12:56.693817Z",
        "2016-05-28T16:12:56Z",
        "2016-05-28t16:12:56z",
        "2016-05-28T16:12:56+01:00",
        "2016-05-28T16:12:56-23:59",
        "2016-05-28T16:12:56+24:00",
        "2016-05-28T16:12:56+23:60",
        "2016-05-28T16:12:56.Z",
        "2016-05-28T16:12:56.0000000000001Z",
        "2016-12-31T23:59:60Z",
        "2016-12-31T23:59:60.5Z",
        "2016-12-31T22:59:60Z",
        "2016-12-31T15:59:60-08:00",
        "2017-01-01T00:59:60+01:00",
        "2017-01-01T00:59:60+02:00",
        "2016-12-31T23:58:60Z",
        "2016-02-29T00:00:00Z",
        "2015-02-29T00:00:00Z",
        "2000-02-29T00:00:00Z",
        "1900-02-29T00:00:00Z",
        "0000-01-01T00:00:00Z",
        "9999-12-31T23:59:59+00:00",
        "2016-04-31T00:00:00Z",
        "2016-13-01T00:00:00Z",
        "2016-00-01T00:00:00Z",
        "2016-01-00T00:00:00Z",
        "2016-05-28T23:59:59Z",
        "2016-05-28T24:00:00Z",
        "2016-05-28T23:60:00Z",
        "2016-05-28T23:59:61Z",
        "2016-05-28 16:12:56Z",
        "2016-05-28T16:12:56",
        "2016-05-28T16:12Z",
        "2016-05-28T1:12:56Z",
        "2016-05-28T16:12:56+0100",
        "2016-05-28T16:12:56+01",
        "2016-05-28T16:12:56Zx",
        "2016-05-28T16:12:56 Z",
        "2016-5-28T16:12:56Z",
        "16-05-28T16:12:56Z",
        "+2016-05-28T16:12:56Z",
        "2016-05-28TT16:12:56Z",
        "2016/05/28T16:12:56Z",
        "2016-05-28",
        "T16:12:56Z",
        "",
        "tomorrow",
        "２０１６-05-28T16:12:56Z",
        "2016-05-28T16:12:56.５Z",
    ];
    for sample in samples {
        assert_eq!(
            parse_date_time(sample).is_some(),
            validator.is_valid(&json!(sample)),
            "date-time {sample:?}"
        );
    }
}
