//! OpenAI's Files API: upload, list, retrieve, download, delete. Each key sees only its own
//! files. Bodies are encrypted as they stream in (`vault`), written under a temporary name and
//! renamed into place once whole, and only then recorded: an upload cut off at any point leaves
//! no file that can be listed or read.

use std::fs::File;
use std::path::PathBuf;

use axum::body::{Body, Bytes};
use axum::extract::multipart::MultipartError;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use tokio_stream::wrappers::ReceiverStream;

use super::generation::{response_id, unix_now};
use super::params::{AppMultipart, AppPath, AppQuery};
use super::ApiError;
use crate::storage::FileStorage;
use crate::store::{FileRecord, KeyRecord};
use crate::vault::{Opener, Sealer, VaultError};
use crate::AppState;

/// The purposes OpenAI's API accepts.
const PURPOSES: [&str; 6] = [
    "assistants",
    "batch",
    "fine-tune",
    "vision",
    "user_data",
    "evals",
];

/// A file as OpenAI's API describes it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct FileObject {
    id: String,
    object: &'static str,
    bytes: i64,
    created_at: i64,
    filename: String,
    purpose: String,
    status: &'static str,
}

impl From<&FileRecord> for FileObject {
    fn from(record: &FileRecord) -> Self {
        Self {
            id: record.id.clone(),
            object: "file",
            bytes: record.bytes,
            created_at: record.created_at,
            filename: record.filename.clone(),
            purpose: record.purpose.clone(),
            status: "processed",
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct FileList {
    object: &'static str,
    data: Vec<FileObject>,
    has_more: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct DeletedFile {
    id: String,
    object: &'static str,
    deleted: bool,
}

/// The multipart form of an upload (for the API document).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct FileUpload {
    /// The file's content.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
    /// One of `assistants`, `batch`, `fine-tune`, `vision`, `user_data`, `evals`.
    purpose: String,
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    /// Only files of this purpose.
    purpose: Option<String>,
}

/// A body being written: removed on drop unless it was moved into place.
struct TempBody(Option<PathBuf>);

impl Drop for TempBody {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn multipart_error(error: MultipartError, limit: u64) -> ApiError {
    if error.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge(limit as usize)
    } else {
        ApiError::invalid(
            "file",
            format!("invalid multipart body: {}", error.body_text()),
        )
    }
}

/// Uploads a file (multipart: `file` and `purpose`); stored encrypted.
#[utoipa::path(post, path = "/files", tag = "files",
    request_body(content = FileUpload, content_type = "multipart/form-data"),
    responses((status = 200, description = "The stored file", body = FileObject)))]
pub async fn upload(
    State(state): State<AppState>,
    Extension(key): Extension<KeyRecord>,
    AppMultipart(mut form): AppMultipart,
) -> Result<Json<FileObject>, ApiError> {
    let storage = state.files.clone();
    let limit = storage.max_bytes;
    let id = response_id("file");
    let (data_key, wrapped_key) = storage.keys.current.new_data_key(&id);
    let mut purpose = None;
    let mut body: Option<(TempBody, String, u64)> = None;
    while let Some(mut field) = form
        .next_field()
        .await
        .map_err(|e| multipart_error(e, limit))?
    {
        match field.name() {
            Some("purpose") => {
                purpose = Some(field.text().await.map_err(|e| multipart_error(e, limit))?)
            }
            Some("file") if body.is_none() => {
                let filename = field.file_name().unwrap_or("upload").to_string();
                let temp = TempBody(Some(storage.temp_path(&id)));
                let path = temp.0.clone().expect("just set");
                let mut sealer = Sealer::new(File::create(&path)?, &data_key, &id)?;
                let mut received = 0u64;
                while let Some(chunk) =
                    field.chunk().await.map_err(|e| multipart_error(e, limit))?
                {
                    received += chunk.len() as u64;
                    if received > limit {
                        return Err(ApiError::PayloadTooLarge(limit as usize));
                    }
                    sealer.write(&chunk)?;
                }
                let bytes = tokio::task::block_in_place(|| sealer.finish())?;
                body = Some((temp, filename, bytes));
            }
            Some("file") => return Err(ApiError::invalid("file", "send one file per upload")),
            // Other fields (and their bytes) are ignored.
            _ => {}
        }
    }
    let purpose = purpose.ok_or_else(|| ApiError::invalid("purpose", "`purpose` is required"))?;
    if !PURPOSES.contains(&purpose.as_str()) {
        return Err(ApiError::invalid(
            "purpose",
            format!(
                "purpose must be one of {}; got `{purpose}`",
                PURPOSES.join(", ")
            ),
        ));
    }
    let Some((mut temp, filename, bytes)) = body else {
        return Err(ApiError::invalid("file", "`file` is required"));
    };
    let record = FileRecord {
        id: id.clone(),
        key_id: key.id.clone(),
        filename,
        purpose,
        bytes: bytes as i64,
        created_at: unix_now() as i64,
        wrapped_key,
        master_key_id: storage.keys.current.id.clone(),
    };
    let final_path = storage.body_path(&id);
    std::fs::rename(temp.0.as_ref().expect("set until moved"), &final_path)?;
    temp.0 = None;
    if let Err(e) = state.store().insert_file(&record).await {
        let _ = std::fs::remove_file(&final_path);
        return Err(e.into());
    }
    Ok(Json(FileObject::from(&record)))
}

/// The key's files, newest first.
#[utoipa::path(get, path = "/files", tag = "files", params(ListQuery),
    responses((status = 200, description = "The key's files", body = FileList)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(key): Extension<KeyRecord>,
    AppQuery(query): AppQuery<ListQuery>,
) -> Result<Json<FileList>, ApiError> {
    let records = state
        .store()
        .files(&key.id, query.purpose.as_deref())
        .await?;
    Ok(Json(FileList {
        object: "list",
        data: records.iter().map(FileObject::from).collect(),
        has_more: false,
    }))
}

async fn owned(state: &AppState, key: &KeyRecord, id: &str) -> Result<FileRecord, ApiError> {
    state
        .store()
        .file(&key.id, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("No such file: {id}")))
}

/// One file's description.
#[utoipa::path(get, path = "/files/{file_id}", tag = "files", params(("file_id" = String, Path)),
    responses((status = 200, description = "The file", body = FileObject)))]
pub async fn retrieve(
    State(state): State<AppState>,
    Extension(key): Extension<KeyRecord>,
    AppPath(id): AppPath<String>,
) -> Result<Json<FileObject>, ApiError> {
    Ok(Json(FileObject::from(&owned(&state, &key, &id).await?)))
}

/// Deletes a file: its record, then its body.
#[utoipa::path(delete, path = "/files/{file_id}", tag = "files",
    params(("file_id" = String, Path)),
    responses((status = 200, description = "The file is gone", body = DeletedFile)))]
pub async fn delete(
    State(state): State<AppState>,
    Extension(key): Extension<KeyRecord>,
    AppPath(id): AppPath<String>,
) -> Result<Json<DeletedFile>, ApiError> {
    if !state.store().delete_file(&key.id, &id).await? {
        return Err(ApiError::NotFound(format!("No such file: {id}")));
    }
    match std::fs::remove_file(state.files.body_path(&id)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    Ok(Json(DeletedFile {
        id,
        object: "file",
        deleted: true,
    }))
}

/// The file's content. The whole body is authenticated before the first byte is sent, so a
/// damaged file is an error, never wrong content.
#[utoipa::path(get, path = "/files/{file_id}/content", tag = "files",
    params(("file_id" = String, Path)),
    responses((status = 200, description = "The file's bytes",
        content_type = "application/octet-stream", body = Vec<u8>)))]
pub async fn content(
    State(state): State<AppState>,
    Extension(key): Extension<KeyRecord>,
    AppPath(id): AppPath<String>,
) -> Result<Response, ApiError> {
    let record = owned(&state, &key, &id).await?;
    let storage: &FileStorage = &state.files;
    let data_key = storage
        .keys
        .unwrap(&record.wrapped_key, &record.id, &record.master_key_id)?;
    let path = storage.body_path(&id);
    let open = {
        let (path, id) = (path.clone(), id.clone());
        move || Opener::new(File::open(&path)?, &data_key, &id)
    };
    let verify = open.clone();
    tokio::task::spawn_blocking(move || verify()?.verify())
        .await
        .map_err(std::io::Error::other)??;
    let (sender, receiver) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let mut opener = match open() {
            Ok(opener) => opener,
            Err(e) => return drop(sender.blocking_send(Err(std::io::Error::other(e)))),
        };
        loop {
            let next = match opener.next_chunk() {
                Ok(Some(chunk)) => Ok(Bytes::from(chunk)),
                Ok(None) => return,
                Err(e) => Err(std::io::Error::other(e)),
            };
            let failed = next.is_err();
            if sender.blocking_send(next).is_err() || failed {
                return;
            }
        }
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, record.bytes.to_string()),
        ],
        Body::from_stream(ReceiverStream::new(receiver)),
    )
        .into_response())
}

impl From<VaultError> for ApiError {
    fn from(error: VaultError) -> Self {
        match error {
            VaultError::Io(e) => ApiError::Io(e),
            other => ApiError::Vault(other.to_string()),
        }
    }
}
