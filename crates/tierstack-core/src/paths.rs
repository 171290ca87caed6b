//! Path expansion for config files: `~` and `$VAR` / `${VAR}`.

use std::path::PathBuf;

/// Expands a leading `~` (the user's home) and `$VAR` / `${VAR}` anywhere.
/// An unset variable is an error naming it, so a typo does not silently
/// become a relative path.
pub fn expand(path: &str) -> Result<PathBuf, String> {
    let mut out = String::with_capacity(path.len());
    let rest = if path == "~" || path.starts_with("~/") {
        let home = std::env::var("HOME")
            .map_err(|_| format!("cannot expand ~ in {path:?}: HOME is not set"))?;
        out.push_str(&home);
        &path[1..]
    } else {
        path
    };
    let mut chars = rest.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        let braced = chars.peek().is_some_and(|&(_, c)| c == '{');
        if braced {
            chars.next();
        }
        let mut name = String::new();
        while let Some(&(_, c)) = chars.peek() {
            if c.is_ascii_alphanumeric() || c == '_' {
                name.push(c);
                chars.next();
            } else {
                break;
            }
        }
        if braced {
            match chars.next() {
                Some((_, '}')) => {}
                _ => return Err(format!("unclosed ${{ in {path:?}")),
            }
        }
        if name.is_empty() {
            out.push('$');
            continue;
        }
        let value = std::env::var(&name)
            .map_err(|_| format!("environment variable {name} in {path:?} is not set"))?;
        out.push_str(&value);
    }
    Ok(PathBuf::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_home_and_variables() {
        let home = std::env::var("HOME").unwrap();
        assert_eq!(
            expand("~/.cache/x").unwrap(),
            PathBuf::from(format!("{home}/.cache/x"))
        );
        assert_eq!(
            expand("$HOME/a").unwrap(),
            PathBuf::from(format!("{home}/a"))
        );
        assert_eq!(
            expand("${HOME}/b").unwrap(),
            PathBuf::from(format!("{home}/b"))
        );
        assert_eq!(expand("/plain/path").unwrap(), PathBuf::from("/plain/path"));
        assert_eq!(expand("/cost/$5").unwrap(), PathBuf::from("/cost/$5"));
        assert!(
            expand("$TIERSTACK_SURELY_UNSET_VAR/x")
                .unwrap_err()
                .contains("TIERSTACK_SURELY_UNSET_VAR")
        );
        assert!(expand("${HOME").is_err());
    }
}
