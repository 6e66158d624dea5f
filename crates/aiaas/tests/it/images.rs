//! Image classification over HTTP: the real EfficientNet-Lite0 on the Grace Hopper photo, sent
//! as multipart files, base64 and data URLs; bad images refused with clear 400s.

use base64::Engine as _;
use reqwest::multipart::{Form, Part};
use serde_json::{json, Value};

use crate::common::{error, TestServer, KEY};

pub const EFFICIENTNET: &str = "efficientnet-lite0";

/// The photo (`scripts/fetch-test-images`).
pub fn photo_path() -> std::path::PathBuf {
    let folder = aiaas_engine::fetch::cache_dir().join("testdata/images");
    assert!(
        folder.join(".complete").is_file(),
        "no test photo in {}: run scripts/fetch-test-images",
        folder.display()
    );
    folder.join("grace_hopper.jpg")
}

pub fn photo() -> Vec<u8> {
    std::fs::read(photo_path()).unwrap()
}

/// The reference's probability of the top class (`tests/reference/efficientnet-lite0.json`).
fn reference_top_probability() -> f64 {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/reference/efficientnet-lite0.json"
    );
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(reference["top5"][0]["index"], 652);
    reference["top5"][0]["probability"].as_f64().unwrap()
}

async fn send_form(server: &TestServer, form: Form) -> (u16, Value) {
    let response = (server.client.post(server.url("/v1/images/classifications")))
        .bearer_auth(KEY)
        .multipart(form)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

fn labels(classes: &Value) -> Vec<&str> {
    (classes.as_array().unwrap().iter())
        .map(|c| c["label"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn the_photo_is_classified_as_the_reference_does_from_a_file_base64_or_a_data_url() {
    let server = TestServer::start(&[EFFICIENTNET]).await;
    let form = Form::new()
        .part("file", Part::bytes(photo()).file_name("grace_hopper.jpg"))
        .text("model", EFFICIENTNET)
        .text("top_k", "3");
    let (status, body) = send_form(&server, form).await;
    assert_eq!(status, 200, "{body}");
    let classes = &body["data"][0]["classes"];
    assert_eq!(
        labels(classes),
        ["military uniform", "mortarboard", "academic gown"],
        "{body}"
    );
    assert_eq!(classes[0]["index"], 652);
    let top = classes[0]["score"].as_f64().unwrap();
    let expected = reference_top_probability();
    assert!(
        (top - expected).abs() <= 0.005,
        "p = {top}, reference {expected}"
    );
    assert_eq!(body["usage"]["images"], 1);

    // The same photo twice in JSON, as base64 and as a data URL: one answer each, the same.
    let encoded = base64::engine::general_purpose::STANDARD.encode(photo());
    let request = json!({
        "model": EFFICIENTNET,
        "image": [encoded.clone(), format!("data:image/jpeg;base64,{encoded}")],
    });
    let (status, body) = server.post("/v1/images/classifications", &request).await;
    assert_eq!(status, 200, "{body}");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[0]["classes"], data[1]["classes"]);
    assert_eq!(
        data[0]["classes"].as_array().unwrap().len(),
        5,
        "top_k defaults to 5"
    );
    assert!((data[0]["classes"][0]["score"].as_f64().unwrap() - top).abs() < 1e-6);

    // Billed by the image: 1 + 2.
    let (_, usage) = server.get("/admin/usage?by=model").await;
    let group = &usage["data"][0];
    assert_eq!(group["images"], 3, "{usage}");
}

/// A PNG that declares `width` × `height` pixels and holds almost nothing: a decompression
/// bomb's header (and a scrap of image data).
fn png_header(width: u32, height: u32) -> Vec<u8> {
    let mut header = width.to_be_bytes().to_vec();
    header.extend_from_slice(&height.to_be_bytes());
    header.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, data) in [
        (b"IHDR", header),
        (b"IDAT", vec![0x78, 0x9c, 0x03, 0x00]),
        (b"IEND", vec![]),
    ] {
        let mut chunk = kind.to_vec();
        chunk.extend_from_slice(&data);
        png.extend_from_slice(&(data.len() as u32).to_be_bytes());
        png.extend_from_slice(&chunk);
        png.extend_from_slice(&crc32(&chunk).to_be_bytes());
    }
    png
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (!(crc & 1)).wrapping_add(1));
        }
    }
    !crc
}

#[tokio::test]
async fn bad_images_and_requests_get_clear_400s() {
    let server = TestServer::start(&[EFFICIENTNET]).await;
    let photo = photo();
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!({"model": EFFICIENTNET, "image": b64(&photo[..photo.len() / 3])}),
            "image",
            "truncated",
        ),
        (
            json!({"model": EFFICIENTNET, "image": b64(b"this is not a picture at all")}),
            "image",
            "not recognised",
        ),
        (
            json!({"model": EFFICIENTNET, "image": ""}),
            "image",
            "empty",
        ),
        (
            json!({"model": EFFICIENTNET, "image": b64(b"II*\0\x08\0\0\0 a TIFF file")}),
            "image",
            "TIFF images are not supported",
        ),
        (
            json!({"model": EFFICIENTNET, "image": b64(&png_header(100_000, 100_000))}),
            "image",
            "over the limit",
        ),
        (
            json!({"model": EFFICIENTNET, "image": "%%%not base64%%%"}),
            "image",
            "base64",
        ),
        (
            json!({"model": EFFICIENTNET, "image": "data:image/png,rawdata"}),
            "image",
            "base64",
        ),
        (
            json!({"model": EFFICIENTNET, "image": []}),
            "image",
            "no image",
        ),
        (
            json!({"model": EFFICIENTNET, "image": vec![b64(&photo); 17]}),
            "image",
            "at most 16",
        ),
        (
            json!({"model": EFFICIENTNET, "image": b64(&photo), "top_k": 0}),
            "top_k",
            "between 1 and 1000",
        ),
        (
            json!({"model": "all-minilm-l6-v2", "image": b64(&photo)}),
            "",
            "",
        ),
    ];
    for (request, param, words) in cases {
        let (status, body) = server.post("/v1/images/classifications", &request).await;
        if param.is_empty() {
            assert_eq!(status, 404, "an unknown model: {body}");
            continue;
        }
        assert_eq!(status, 400, "{request:.200}: {body}");
        let error = error(&body);
        assert_eq!(error["param"], param, "{body}");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(words), "{words:?} not in {message:?}");
    }
    // In a list, the message says which image is bad.
    let request = json!({"model": EFFICIENTNET, "image": [b64(&photo), b64(b"junk")]});
    let (status, body) = server.post("/v1/images/classifications", &request).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("image[1]"),
        "{body}"
    );
    // A multipart form without a file.
    let (status, body) = send_form(&server, Form::new().text("model", EFFICIENTNET)).await;
    assert_eq!(
        (status, &error(&body)["param"]),
        (400, &json!("file")),
        "{body}"
    );
    // The server still serves.
    let request = json!({"model": EFFICIENTNET, "image": b64(&photo), "top_k": 1});
    let (status, body) = server.post("/v1/images/classifications", &request).await;
    assert_eq!(
        (status, &body["data"][0]["classes"][0]["index"]),
        (200, &json!(652)),
        "{body}"
    );
}

#[tokio::test]
async fn concurrent_requests_all_get_their_own_answer() {
    let server = TestServer::start(&[EFFICIENTNET]).await;
    let encoded = base64::engine::general_purpose::STANDARD.encode(photo());
    let requests = (0..8).map(|i| {
        let request =
            json!({"model": EFFICIENTNET, "image": vec![encoded.clone(); 1 + i % 3], "top_k": 1});
        let server = &server;
        async move { server.post("/v1/images/classifications", &request).await }
    });
    for (i, (status, body)) in futures::future::join_all(requests)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(status, 200, "{body}");
        let data = body["data"].as_array().unwrap();
        assert_eq!(data.len(), 1 + i % 3);
        assert!(
            data.iter().all(|d| d["classes"][0]["index"] == 652),
            "{body}"
        );
    }
    let batches = server.metric("aiaas_batch_size_count").await;
    println!("8 requests of 16 images ran in {batches} forward passes");
}
