//! tracefs: mounted when missing (classic tracepoints need it), and the field
//! offsets of a classic tracepoint's record read from its `format` file.

use std::{
    ffi::CString,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};

const CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// The tracefs mount point, mounting it at `/sys/kernel/tracing` when absent.
pub fn ensure_mounted() -> Result<PathBuf> {
    for dir in CANDIDATES {
        if Path::new(dir).join("events").is_dir() {
            return Ok(PathBuf::from(dir));
        }
    }
    let target = CANDIDATES[0];
    let c = |s: &str| CString::new(s).expect("no NUL in literal");
    let (source, fstype, dir) = (c("tracefs"), c("tracefs"), c(target));
    // SAFETY: all pointers are valid NUL-terminated strings for the call's duration.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            dir.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        bail!(
            "tracefs is not mounted and mounting it at {target} failed ({err}); \
             mount it with `mount -t tracefs tracefs {target}`"
        );
    }
    Ok(PathBuf::from(target))
}

/// One field of a classic tracepoint record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub offset: u32,
    pub size: u32,
}

/// Parses the `field:` lines of a tracepoint `format` file.
pub fn parse_format(text: &str) -> Vec<Field> {
    let mut fields = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("field:") else {
            continue;
        };
        let mut parts = rest.split(';').map(str::trim);
        let Some(decl) = parts.next() else { continue };
        let mut offset = None;
        let mut size = None;
        for part in parts {
            if let Some(v) = part.strip_prefix("offset:") {
                offset = v.parse().ok();
            } else if let Some(v) = part.strip_prefix("size:") {
                size = v.parse().ok();
            }
        }
        // "const void * skaddr" or "__u8 saddr[28]": the name is the last word, less any [..].
        let name = decl
            .rsplit(|c: char| c.is_whitespace() || c == '*')
            .next()
            .unwrap_or("")
            .split('[')
            .next()
            .unwrap_or("");
        if let (Some(offset), Some(size)) = (offset, size) {
            fields.push(Field {
                name: name.to_owned(),
                offset,
                size,
            });
        }
    }
    fields
}

/// Field offsets of `category/name`, by field name.
pub fn tracepoint_fields(tracefs: &Path, category: &str, name: &str) -> Result<Vec<Field>> {
    let path = tracefs
        .join("events")
        .join(category)
        .join(name)
        .join("format");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "tracepoint {category}/{name} not found ({})",
            path.display()
        )
    })?;
    Ok(parse_format(&text))
}

/// Offset of one field, or an error naming the tracepoint and field.
pub fn offset_of(fields: &[Field], tracepoint: &str, field: &str) -> Result<u32> {
    fields
        .iter()
        .find(|f| f.name == field)
        .map(|f| f.offset)
        .with_context(|| format!("tracepoint {tracepoint} has no field {field}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEND_RESET: &str = include_str!("../../fuzz/corpus/tracefs/tcp_send_reset-6.18");

    #[test]
    fn parses_pointer_enum_and_array_fields() {
        let fields = parse_format(SEND_RESET);
        assert_eq!(offset_of(&fields, "t", "skaddr").unwrap(), 16);
        assert_eq!(offset_of(&fields, "t", "reason").unwrap(), 28);
        assert_eq!(offset_of(&fields, "t", "daddr").unwrap(), 60);
        assert_eq!(fields.iter().find(|f| f.name == "saddr").unwrap().size, 28);
        assert!(offset_of(&fields, "t", "nope").is_err());
    }
}
