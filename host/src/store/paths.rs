//! The host's own check of file paths: workers are swappable, untrusted
//! code, so every path they write is checked here again.

/// Checks a path the worker wants to write. The worker normalises paths
/// already; the host does not trust it to (workers are swappable code).
pub fn validate_path(path: &str) -> Result<(), String> {
    if path.is_empty() || path.len() > 1024 {
        return Err("path must be 1 to 1024 bytes".into());
    }
    if path.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return Err("path has an empty, '.' or '..' segment".into());
    }
    if path.chars().any(|c| c.is_control() || c == '\\') {
        return Err("path has a control character or backslash".into());
    }
    if turserver_protocol::is_reserved(path) {
        return Err("paths under _api/ and _turserver/ are reserved".into());
    }
    Ok(())
}
