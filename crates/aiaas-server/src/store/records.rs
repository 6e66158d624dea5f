//! Rows and the queries over them.

use serde::{Deserialize, Serialize};

use super::{Result, Store};

#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct KeyRecord {
    pub id: String,
    pub name: String,
    pub prefix: String,
    #[serde(skip)]
    pub hash: String,
    pub admin: bool,
    /// Comma-separated model ids, or `*`.
    pub models: String,
    pub rpm: Option<i64>,
    pub tpm: Option<i64>,
    pub daily_tokens: Option<i64>,
    pub monthly_tokens: Option<i64>,
    pub expires_at: Option<i64>,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

impl KeyRecord {
    /// Whether the key may use `model` (scopes are exact ids, or `*`).
    pub fn allows_model(&self, model: &str) -> bool {
        self.models.split(',').any(|m| m == "*" || m == model)
    }

    pub fn has_limits(&self) -> bool {
        self.rpm.is_some() || self.tpm.is_some()
    }
}

#[derive(Debug, Clone)]
pub struct UsageRecord {
    pub key_id: String,
    pub model: String,
    pub route: String,
    pub created_at: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    /// The length of the audio a speech request carried; 0 for others.
    pub audio_seconds: f64,
    /// The images an image request classified; 0 for others.
    pub images: i64,
    pub status: u16,
    pub latency_ms: i64,
}

/// One usage row as the report reads it.
#[derive(sqlx::FromRow)]
struct UsageRow {
    key_id: String,
    model: String,
    created_at: i64,
    prompt_tokens: i64,
    completion_tokens: i64,
    audio_seconds: f64,
    images: i64,
    status: i64,
    latency_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum UsageGrouping {
    Day,
    Key,
    Model,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageFilter {
    pub key: Option<String>,
    pub model: Option<String>,
    /// Unix seconds.
    pub since: Option<i64>,
    #[param(inline)]
    pub by: Option<UsageGrouping>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UsageGroup {
    /// The day (`YYYY-MM-DD`), key id or model id of the group; `all` without grouping.
    pub group: String,
    pub requests: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    /// Seconds of audio transcribed or translated.
    pub audio_seconds: f64,
    /// Images classified.
    pub images: i64,
    pub errors: i64,
    pub latency_p50_ms: i64,
    pub latency_p99_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub at: i64,
    pub actor_key_id: Option<String>,
    pub action: String,
    pub target_key_id: Option<String>,
    pub detail: String,
}

/// A stored file's metadata (its body is on disk, encrypted).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FileRecord {
    pub id: String,
    pub key_id: String,
    pub filename: String,
    pub purpose: String,
    pub bytes: i64,
    pub created_at: i64,
    pub wrapped_key: Vec<u8>,
    pub master_key_id: String,
}

impl Store {
    pub async fn insert_file(&self, file: &FileRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO files (id, key_id, filename, purpose, bytes, created_at, wrapped_key, \
             master_key_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&file.id)
        .bind(&file.key_id)
        .bind(&file.filename)
        .bind(&file.purpose)
        .bind(file.bytes)
        .bind(file.created_at)
        .bind(&file.wrapped_key)
        .bind(&file.master_key_id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The file if it exists and belongs to `key_id`.
    pub async fn file(&self, key_id: &str, id: &str) -> Result<Option<FileRecord>> {
        Ok(
            sqlx::query_as("SELECT * FROM files WHERE id = $1 AND key_id = $2")
                .bind(id)
                .bind(key_id)
                .fetch_optional(self.pool())
                .await?,
        )
    }

    /// `key_id`'s files, newest first, optionally of one purpose.
    pub async fn files(&self, key_id: &str, purpose: Option<&str>) -> Result<Vec<FileRecord>> {
        Ok(sqlx::query_as(
            "SELECT * FROM files WHERE key_id = $1 AND ($2 IS NULL OR purpose = $2) \
             ORDER BY created_at DESC, id DESC",
        )
        .bind(key_id)
        .bind(purpose)
        .fetch_all(self.pool())
        .await?)
    }

    /// Every stored file, of every key.
    pub async fn all_files(&self) -> Result<Vec<FileRecord>> {
        Ok(sqlx::query_as("SELECT * FROM files ORDER BY id")
            .fetch_all(self.pool())
            .await?)
    }

    /// New wrapped data keys for files (`(id, wrapped key)`), all under `master_key_id`, in one
    /// transaction.
    pub async fn rewrap_files(
        &self,
        wrapped: &[(String, Vec<u8>)],
        master_key_id: &str,
    ) -> Result<()> {
        let mut transaction = self.pool().begin().await?;
        for (id, key) in wrapped {
            sqlx::query("UPDATE files SET wrapped_key = $1, master_key_id = $2 WHERE id = $3")
                .bind(key)
                .bind(master_key_id)
                .bind(id)
                .execute(&mut *transaction)
                .await?;
        }
        transaction.commit().await?;
        Ok(())
    }

    /// Deletes the row; whether there was one of `key_id`'s.
    pub async fn delete_file(&self, key_id: &str, id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM files WHERE id = $1 AND key_id = $2")
            .bind(id)
            .bind(key_id)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn insert_key(&self, key: &KeyRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO api_keys (id, name, prefix, hash, admin, models, rpm, tpm, daily_tokens, \
             monthly_tokens, expires_at, created_at, revoked_at, last_used_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(&key.id)
        .bind(&key.name)
        .bind(&key.prefix)
        .bind(&key.hash)
        .bind(key.admin)
        .bind(&key.models)
        .bind(key.rpm)
        .bind(key.tpm)
        .bind(key.daily_tokens)
        .bind(key.monthly_tokens)
        .bind(key.expires_at)
        .bind(key.created_at)
        .bind(key.revoked_at)
        .bind(key.last_used_at)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn key_by_hash(&self, hash: &str) -> Result<Option<KeyRecord>> {
        Ok(sqlx::query_as("SELECT * FROM api_keys WHERE hash = $1")
            .bind(hash)
            .fetch_optional(self.pool())
            .await?)
    }

    pub async fn key_by_id(&self, id: &str) -> Result<Option<KeyRecord>> {
        Ok(sqlx::query_as("SELECT * FROM api_keys WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?)
    }

    pub async fn keys(&self) -> Result<Vec<KeyRecord>> {
        Ok(
            sqlx::query_as("SELECT * FROM api_keys ORDER BY created_at, id")
                .fetch_all(self.pool())
                .await?,
        )
    }

    pub async fn has_admin_key(&self) -> Result<bool> {
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT id FROM api_keys WHERE admin = $1 AND revoked_at IS NULL LIMIT 1",
        )
        .bind(true)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.is_some())
    }

    /// Marks a key revoked; false if there is no such live key.
    pub async fn revoke_key(&self, id: &str, at: i64) -> Result<bool> {
        let done =
            sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(at)
                .bind(id)
                .execute(self.pool())
                .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Gives a live key a new secret; false if there is no such live key.
    pub async fn rotate_key(&self, id: &str, prefix: &str, hash: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE api_keys SET prefix = $1, hash = $2 WHERE id = $3 AND revoked_at IS NULL",
        )
        .bind(prefix)
        .bind(hash)
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn touch_key(&self, id: &str, at: i64) -> Result<()> {
        sqlx::query("UPDATE api_keys SET last_used_at = $1 WHERE id = $2")
            .bind(at)
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    pub async fn insert_usage(&self, usage: &UsageRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO usage_records (key_id, model, route, created_at, prompt_tokens, \
             completion_tokens, audio_seconds, images, status, latency_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&usage.key_id)
        .bind(&usage.model)
        .bind(&usage.route)
        .bind(usage.created_at)
        .bind(usage.prompt_tokens)
        .bind(usage.completion_tokens)
        .bind(usage.audio_seconds)
        .bind(usage.images)
        .bind(i32::from(usage.status))
        .bind(usage.latency_ms)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Tokens (prompt + completion) a key used since `since` (unix seconds).
    pub async fn tokens_since(&self, key_id: &str, since: i64) -> Result<i64> {
        let (total,): (Option<i64>,) = sqlx::query_as(
            "SELECT SUM(prompt_tokens + completion_tokens) FROM usage_records \
             WHERE key_id = $1 AND created_at >= $2",
        )
        .bind(key_id)
        .bind(since)
        .fetch_one(self.pool())
        .await?;
        Ok(total.unwrap_or(0))
    }

    /// Usage totals, grouped as asked. Percentiles are computed here from the matching rows'
    /// latencies, which keeps the SQL portable.
    pub async fn usage(&self, filter: &UsageFilter) -> Result<Vec<UsageGroup>> {
        let rows: Vec<UsageRow> = sqlx::query_as(
            "SELECT key_id, model, created_at, prompt_tokens, completion_tokens, audio_seconds, \
             images, status, latency_ms \
             FROM usage_records WHERE ($1 IS NULL OR key_id = $1) AND ($2 IS NULL OR model = $2) \
             AND created_at >= $3 ORDER BY created_at",
        )
        .bind(filter.key.as_deref())
        .bind(filter.model.as_deref())
        .bind(filter.since.unwrap_or(0))
        .fetch_all(self.pool())
        .await?;
        let mut groups: Vec<(String, Vec<UsageRow>)> = Vec::new();
        for row in rows {
            let group = match filter.by {
                None => "all".to_string(),
                Some(UsageGrouping::Key) => row.key_id.clone(),
                Some(UsageGrouping::Model) => row.model.clone(),
                Some(UsageGrouping::Day) => crate::clock::date_of(row.created_at),
            };
            match groups.iter_mut().find(|(g, _)| *g == group) {
                Some((_, rows)) => rows.push(row),
                None => groups.push((group, vec![row])),
            }
        }
        Ok(groups
            .into_iter()
            .map(|(group, rows)| {
                let mut latencies: Vec<i64> = rows.iter().map(|r| r.latency_ms).collect();
                latencies.sort_unstable();
                UsageGroup {
                    group,
                    requests: rows.len() as i64,
                    prompt_tokens: rows.iter().map(|r| r.prompt_tokens).sum(),
                    completion_tokens: rows.iter().map(|r| r.completion_tokens).sum(),
                    audio_seconds: rows.iter().map(|r| r.audio_seconds).sum(),
                    images: rows.iter().map(|r| r.images).sum(),
                    errors: rows.iter().filter(|r| r.status >= 400).count() as i64,
                    latency_p50_ms: percentile(&latencies, 50),
                    latency_p99_ms: percentile(&latencies, 99),
                }
            })
            .collect())
    }

    pub async fn audit(
        &self,
        actor_key_id: Option<&str>,
        action: &str,
        target_key_id: Option<&str>,
        detail: &str,
        at: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit_log (at, actor_key_id, action, target_key_id, detail) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(at)
        .bind(actor_key_id)
        .bind(action)
        .bind(target_key_id)
        .bind(detail)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn audit_log(&self, limit: i64) -> Result<Vec<AuditEntry>> {
        Ok(
            sqlx::query_as("SELECT * FROM audit_log ORDER BY id DESC LIMIT $1")
                .bind(limit)
                .fetch_all(self.pool())
                .await?,
        )
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[i64], p: usize) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        assert_eq!(percentile(&[1, 2, 3, 4], 50), 2);
        assert_eq!(percentile(&[1, 2, 3, 4], 99), 4);
        assert_eq!(percentile(&[], 99), 0);
    }
}
