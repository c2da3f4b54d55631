//! Static files from `--assets-dir` (the reference server's `--assets_dir`),
//! so a web UI such as Cuttlefish's can be served beside the signaling
//! endpoints.
//!
//! Only GET and HEAD; `/` and directories serve their `index.html`. A path
//! never leaves the directory: `.` and `..` segments are refused, and the
//! file found must resolve (symbolic links followed) inside it.

use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The largest file served; web assets are far smaller, and a file is
/// read whole into memory.
pub(crate) const MAX_FILE_BYTES: u64 = 32 << 20;

/// Answers `method path` from `dir`; `None` when the request is not for a
/// file (another method), so the caller answers as for any unknown path.
pub(crate) async fn serve(dir: &Path, method: &Method, path: &str) -> Option<Response> {
    if method != Method::GET && method != Method::HEAD {
        return None;
    }
    let Some(relative) = relative_path(path) else {
        return Some(not_found(path));
    };
    let Some(file) = resolve(dir, &relative).await else {
        return Some(not_found(path));
    };
    let size = tokio::fs::metadata(&file).await.ok()?.len();
    if size > MAX_FILE_BYTES {
        return Some(
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{path}: larger than the {MAX_FILE_BYTES} bytes served\n"),
            )
                .into_response(),
        );
    }
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        match tokio::fs::read(&file).await {
            Ok(bytes) => Body::from(bytes),
            Err(_) => return Some(not_found(path)),
        }
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(&file)),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Some(response)
}

fn not_found(path: &str) -> Response {
    crate::http::json_error(StatusCode::NOT_FOUND, &format!("Not found: {path}"))
}

/// The request path as segments below the directory, percent-decoded;
/// `None` for a path that tries to leave it or cannot be a file name.
fn relative_path(path: &str) -> Option<PathBuf> {
    let mut relative = PathBuf::new();
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        let segment = percent_decode(segment)?;
        if segment == "." || segment == ".." || segment.contains(['/', '\\', '\0']) {
            return None;
        }
        relative.push(segment);
    }
    Some(relative)
}

/// `%XX` escapes decoded; `None` if they do not make UTF-8.
fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = segment.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The file to serve, resolved (links followed) and checked to be inside
/// `dir`; a directory stands for its `index.html`.
async fn resolve(dir: &Path, relative: &Path) -> Option<PathBuf> {
    let root = tokio::fs::canonicalize(dir).await.ok()?;
    let mut file = tokio::fs::canonicalize(root.join(relative)).await.ok()?;
    if tokio::fs::metadata(&file).await.ok()?.is_dir() {
        file = tokio::fs::canonicalize(file.join("index.html"))
            .await
            .ok()?;
    }
    let inside = file.starts_with(&root) && tokio::fs::metadata(&file).await.ok()?.is_file();
    inside.then_some(file)
}

fn content_type(file: &Path) -> &'static str {
    let extension = file
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("ico") => "image/x-icon",
        Some("webp") => "image/webp",
        Some("wasm") => "application/wasm",
        Some("txt") => "text/plain; charset=utf-8",
        Some("woff2") => "font/woff2",
        Some("woff") => "font/woff",
        Some("ttf") => "font/ttf",
        Some("ivf") => "video/x-ivf",
        Some("webm") => "video/webm",
        Some("mp4") => "video/mp4",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_never_leave_the_directory() {
        assert_eq!(relative_path("/"), Some(PathBuf::new()));
        assert_eq!(
            relative_path("/js/app.js"),
            Some(PathBuf::from("js/app.js"))
        );
        assert_eq!(
            relative_path("/my%20page.html"),
            Some(PathBuf::from("my page.html"))
        );
        for hostile in [
            "/../etc/passwd",
            "/js/../../x",
            "/%2e%2e/x",
            "/a%2fb",
            "/a%5cb",
            "/./x",
            "/%00",
            "/%zz",
            "/%e2%28",
        ] {
            assert_eq!(relative_path(hostile), None, "{hostile}");
        }
    }
}
